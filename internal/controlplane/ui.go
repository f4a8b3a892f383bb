package controlplane

import (
	_ "embed"
	"net/http"
)

// uiPage is the page of /debug/: one HTML file, its CSS and script inline, that reads
// /debug/streams, /debug/diagnostics and /debug/signals from the same address. Nothing
// comes from anywhere else, so it works behind `kubectl port-forward` and offline.
//
//go:embed ui.html
var uiPage []byte

// uiCSP lets the page run its own inline script and style and fetch from the control
// plane, and nothing else: a NACK message or an object's name that reached the page as
// markup could not load or send anything. (The page only ever sets them as text.)
// https://developer.mozilla.org/en-US/docs/Web/HTTP/Headers/Content-Security-Policy
const uiCSP = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"

// ui serves /debug/: the page for people.
func (cp *ControlPlane) ui(w http.ResponseWriter, _ *http.Request) {
	h := w.Header()
	h.Set("Content-Type", "text/html; charset=utf-8")
	h.Set("Content-Security-Policy", uiCSP)
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Cache-Control", "no-cache")
	_, _ = w.Write(uiPage)
}
