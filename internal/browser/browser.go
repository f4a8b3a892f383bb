// Package browser runs Chromium headless for the tests of the control plane's page
// (/debug/): it renders a URL, scripts and all, and returns the DOM as the scripts left
// it, or a screenshot. It drives Chromium through its command-line flags alone, so no
// DevTools client enters the module. The browser is Debian's chromium package, installed
// by scripts/install-chromium.sh; a missing browser is an error, which the tests turn
// into a failure.
package browser

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"golang.org/x/net/html"
)

// Find returns the path of Chromium: chromium on PATH (Debian's name), else
// chromium-browser (Ubuntu's).
func Find() (string, error) {
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			return p, nil
		}
	}
	return "", errors.New("browser: chromium not found on PATH (run scripts/install-chromium.sh)")
}

// Options say how to render a page.
type Options struct {
	// Budget is how much virtual time the page gets to run its scripts before the DOM
	// is read or the screenshot taken. Chromium does not advance virtual time while a
	// fetch is in flight, so a page that fetches on load is read after its answers.
	// Default 3s.
	Budget time.Duration
	// Width and Height are the window's size in CSS pixels. Default 1280×900.
	Width, Height int
	// Timeout bounds the whole run of Chromium. Default 90s: a cold start on a busy
	// machine takes seconds.
	Timeout time.Duration
}

func (o Options) withDefaults() Options {
	if o.Budget <= 0 {
		o.Budget = 3 * time.Second
	}
	if o.Width <= 0 {
		o.Width = 1280
	}
	if o.Height <= 0 {
		o.Height = 900
	}
	if o.Timeout <= 0 {
		o.Timeout = 90 * time.Second
	}
	return o
}

// DumpDOM renders url and returns the serialized DOM.
func DumpDOM(ctx context.Context, bin, url string, o Options) (string, error) {
	out, err := run(ctx, bin, o, "--dump-dom", url)
	if err != nil {
		return "", err
	}
	return out, nil
}

// Screenshot renders url and writes a PNG of the window to file.
func Screenshot(ctx context.Context, bin, url, file string, o Options) error {
	if _, err := run(ctx, bin, o, "--screenshot="+file, "--hide-scrollbars", url); err != nil {
		return err
	}
	if st, err := os.Stat(file); err != nil || st.Size() == 0 {
		return fmt.Errorf("browser: no screenshot written to %s (%v)", file, err)
	}
	return nil
}

func run(ctx context.Context, bin string, o Options, args ...string) (string, error) {
	o = o.withDefaults()
	ctx, cancel := context.WithTimeout(ctx, o.Timeout)
	defer cancel()
	// A profile of its own per run: two Chromiums on one profile would wait for each
	// other's lock, and nothing of a run is left behind.
	profile, err := os.MkdirTemp("", "bearkong-chromium-")
	if err != nil {
		return "", fmt.Errorf("browser: %w", err)
	}
	defer os.RemoveAll(profile)
	cmd := exec.CommandContext(ctx, bin, append([]string{
		"--headless",
		// The tests run as root, where Chromium refuses its sandbox.
		"--no-sandbox",
		"--disable-gpu",
		"--disable-dev-shm-usage",
		"--no-first-run",
		"--no-default-browser-check",
		"--disable-extensions",
		"--disable-background-networking",
		"--user-data-dir=" + profile,
		"--window-size=" + strconv.Itoa(o.Width) + "," + strconv.Itoa(o.Height),
		"--virtual-time-budget=" + strconv.FormatInt(o.Budget.Milliseconds(), 10),
	}, args...)...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("browser: %s %s: %w\n%s", bin, strings.Join(args, " "), err, tail(stderr.String(), 2048))
	}
	return stdout.String(), nil
}

func tail(s string, n int) string {
	if len(s) > n {
		return "..." + s[len(s)-n:]
	}
	return s
}

// Element is an element of a rendered page, for tests to look at.
type Element struct {
	n *html.Node
}

// Parse parses a DOM that DumpDOM returned.
func Parse(dom string) (*Element, error) {
	n, err := html.Parse(strings.NewReader(dom))
	if err != nil {
		return nil, fmt.Errorf("browser: %w", err)
	}
	return &Element{n}, nil
}

// Attr returns the value of the attribute key, or "".
func (e *Element) Attr(key string) string {
	for _, a := range e.n.Attr {
		if a.Key == key {
			return a.Val
		}
	}
	return ""
}

// HasClass reports whether the class attribute holds class.
func (e *Element) HasClass(class string) bool {
	return strings.Contains(" "+e.Attr("class")+" ", " "+class+" ")
}

// Text is the text inside the element, with runs of white space made one space.
func (e *Element) Text() string {
	var b strings.Builder
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		if n.Type == html.TextNode {
			b.WriteString(n.Data)
			b.WriteByte(' ')
		}
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			walk(c)
		}
	}
	walk(e.n)
	return strings.Join(strings.Fields(b.String()), " ")
}

// ByID returns the element with that id, or nil.
func (e *Element) ByID(id string) *Element {
	all := e.All(func(x *Element) bool { return x.Attr("id") == id })
	if len(all) == 0 {
		return nil
	}
	return all[0]
}

// All returns the elements under e (e excluded) for which match is true, in document
// order.
func (e *Element) All(match func(*Element) bool) []*Element {
	var out []*Element
	var walk func(*html.Node)
	walk = func(n *html.Node) {
		for c := n.FirstChild; c != nil; c = c.NextSibling {
			if c.Type == html.ElementNode {
				if x := (&Element{c}); match(x) {
					out = append(out, x)
				}
			}
			walk(c)
		}
	}
	walk(e.n)
	return out
}

// Tag returns the elements under e with that tag name, in document order.
func (e *Element) Tag(name string) []*Element {
	return e.All(func(x *Element) bool { return x.n.Data == name })
}
