package mesh

import (
	"strings"
	"testing"
)

// re2Sizes are RE2 program sizes as Envoy 1.36.4 reports them (its NACK message says
// "RE2 program size of N"); TestRegexProgramSizeEnvoy in pkg/translate measures them
// again on the real Envoy. Go's own instruction count (len(syntax.Prog.Inst)) is not
// RE2's: 3 for "a", 4 for ".*", 129 for "[a-z0-9-]{1,64}", 38 for the UUID; that is why
// RegexProgramSize compiles the way RE2 does.
var re2Sizes = []struct {
	pattern string
	re2     int
}{
	{"a", 5},
	{"/api/v1", 11},
	{".", 12},
	{".*", 12},
	{"[a-z0-9-]", 7},
	{"[a-z0-9-]+", 8},
	{"[a-z0-9-]{1,8}", 35},
	{"[a-z0-9-]{1,64}", 259},
	{"[a-z0-9-]{1,249}", 999},
	{"[a-z0-9-]{1,250}", 1003},
	{"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}", 72},
	{"/v[0-9]+/items/[a-z0-9-]{1,100}(/.*)?", 426},
	{"^/api/.*$", 12},
	{"^/api/", 4},
	{`\Afoo\z`, 4},
	{"(foo|bar|baz)", 13},
	{"ab|ac", 6},
	{`\w+`, 8},
	{"[^/]+", 13},
	{"(?i)abc", 7},
	{"(?i)[a-z]", 10},
	{"(ab)+", 9},
	{"(ab)*", 8},
	{"(a*)*", 11},
	{`\bfoo`, 8},
	{"(?m)^a$", 7},
	{"é", 6},
	{"[α-ω]+", 9},
	{"日本", 10},
	{`[\x{10000}-\x{10FFFF}]`, 12},
	{"/(foo|bar)/(baz|qux)?", 23},
	{`\pN`, 237},
	{`\p{Greek}`, 66},
	{`[\x{20000}-\x{2A6DF}\x{2A700}-\x{2B739}]`, 17},
	{`[\x{1000}-\x{1001}\x{2000}]`, 10},
}

func TestRegexProgramSize(t *testing.T) {
	for _, tc := range re2Sizes {
		t.Run(tc.pattern, func(t *testing.T) {
			got, err := RegexProgramSize(tc.pattern)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.re2 {
				t.Errorf("RegexProgramSize(%q) = %d, RE2 says %d", tc.pattern, got, tc.re2)
			}
		})
	}
}

// TestRegexProgramSizeUnicodeVersion: Go and Envoy's RE2 may carry different Unicode
// versions, so a script's table can differ by a few ranges: the size is then close to
// RE2's, not equal.
func TestRegexProgramSizeUnicodeVersion(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		re2     int
	}{{`\pL`, 1200}, {`\p{Han}`, 84}} {
		got, err := RegexProgramSize(tc.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if d := got - tc.re2; d < -tc.re2/20 || d > tc.re2/20 {
			t.Errorf("RegexProgramSize(%q) = %d, RE2 says %d: more than 5%% apart", tc.pattern, got, tc.re2)
		}
	}
}

func TestCheckRegex(t *testing.T) {
	for _, tc := range []struct {
		pattern string
		wantErr string
	}{
		{"/api/v[0-9]+/users/[a-z0-9-]{1,64}", ""},
		{"[a-z0-9-]{1,249}", ""},
		{"[a-z0-9-]{1,250}", "size 1003, over the limit of 1000"},
		{`\pL{1,8}`, "over the limit"},
		{"(", "invalid regular expression"},
		{"a++", "invalid regular expression"},
	} {
		t.Run(tc.pattern, func(t *testing.T) {
			err := CheckRegex(tc.pattern)
			if tc.wantErr == "" {
				if err != nil {
					t.Fatalf("CheckRegex(%q) = %v, want nil", tc.pattern, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("CheckRegex(%q) = %v, want an error containing %q", tc.pattern, err, tc.wantErr)
			}
		})
	}
}
