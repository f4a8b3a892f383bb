package mesh

import "fmt"

// AnnotationAccessLog turns on access logs for a Service's traffic: the callee's inbound
// listener and every caller's outbound listener write one line per request to the
// sidecar's standard output, in the format named (AccessLogFormat). Without it the
// control plane's default applies (`bearkong cp --default-access-log`, off unless set).
const AnnotationAccessLog = "mesh-access-log"

// AccessLogFormat is how a sidecar writes a Service's access log lines. The empty value
// means "not set": the control plane's default applies.
type AccessLogFormat string

// The formats, spelt as the annotation takes them.
const (
	// AccessLogJSON writes one JSON object per line: what log pipelines parse.
	AccessLogJSON AccessLogFormat = "json"
	// AccessLogText writes the same fields as key=value text, for people reading a pod's
	// log.
	AccessLogText AccessLogFormat = "text"
	// AccessLogOff writes nothing, whatever the control plane's default.
	AccessLogOff AccessLogFormat = "off"
)

// ParseAccessLogFormat parses a mesh-access-log value (or the control plane's default).
// Only the three lower-case words are valid, as written: "JSON" or " json" is a
// mistake to report, like every other invalid annotation, not something to guess at.
func ParseAccessLogFormat(v string) (AccessLogFormat, error) {
	switch f := AccessLogFormat(v); f {
	case AccessLogJSON, AccessLogText, AccessLogOff:
		return f, nil
	}
	return "", fmt.Errorf("must be %s, %s or %s (lower case)", AccessLogJSON, AccessLogText, AccessLogOff)
}

// Or returns f, or def when f is not set.
func (f AccessLogFormat) Or(def AccessLogFormat) AccessLogFormat {
	if f == "" {
		return def
	}
	return f
}

// Logs reports whether f writes lines: it is set and not off.
func (f AccessLogFormat) Logs() bool { return f == AccessLogJSON || f == AccessLogText }

// accessLogField is mesh-access-log as a policy annotation.
var accessLogField = policyField{
	key: AnnotationAccessLog,
	parse: func(v string, p *Policy) error {
		f, err := ParseAccessLogFormat(v)
		if err != nil {
			return err
		}
		p.AccessLog = f
		return nil
	},
	absent: func(Policy) string { return "the control plane's default (--default-access-log)" },
}
