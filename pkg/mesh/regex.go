package mesh

import (
	"fmt"
	"regexp/syntax"
	"unicode/utf8"
)

// RE2 program-size limits. Envoy compiles every safe_regex with RE2 and rejects, with
// a NACK, any whose compiled program has more instructions than the runtime key
// re2.max_program_size.error_level allows (Envoy's default is 100); above
// re2.max_program_size.warn_level it logs a warning:
// https://www.envoyproxy.io/docs/envoy/latest/api-v3/type/matcher/v3/regex.proto
//
// The sidecar bootstrap (pkg/translate) sets both keys to these values, and discovery
// refuses an HTTPRoute whose regexes exceed RegexMaxProgramSize, so that what bearkong
// accepts is exactly what every proxy accepts.
//
// Why 1000: Envoy's 100 refuses everyday patterns (a bounded repetition such as
// [a-z0-9-]{1,64} costs 259 instructions, a UUID 72), while the cost a limit protects
// against grows with the program: each proxy compiles every route regex in memory, and
// RE2's matching time and DFA memory are linear in the program size. 1000 admits
// bounded ASCII repetitions up to a few hundred characters and refuses the patterns that
// blow up (a repeated Unicode class such as \pL{1,8} is over 9000).
const (
	RegexMaxProgramSize = 1000
	// RegexWarnProgramSize equals the error level: bearkong never sends a regex above
	// the error level, so a lower warn level would only add log lines in the sidecars
	// for patterns bearkong already judged acceptable.
	RegexWarnProgramSize = RegexMaxProgramSize
)

// RegexProgramSize returns the size of the program RE2 compiles pattern into: the
// number RE2::ProgramSize() gives, which Envoy compares with its limit.
//
// Go's regexp/syntax is a port of RE2's parser and simplifier, but not of its compiler:
// Go compiles to one instruction per rune class, RE2 to byte ranges over UTF-8, and RE2
// then "flattens" the program (Prog::Flatten) so that alternations become lists and
// disappear. Go's instruction count is therefore not RE2's ([a-z0-9-]{1,64}: Go 129, RE2
// 259). This function parses and simplifies with regexp/syntax and then reproduces RE2's
// compiler and flattening on the result. It is exact for ASCII patterns, the ones routes
// carry (TestRegexProgramSizeEnvoy in pkg/translate checks a table of them against
// Envoy 1.36.4), including UTF-8 classes. The one known gap is data, not code: a
// Unicode script (\p{Han}) whose table differs between Go's Unicode version and RE2's
// can come out a few instructions apart.
func RegexProgramSize(pattern string) (int, error) {
	re, err := syntax.Parse(pattern, syntax.Perl)
	if err != nil {
		return 0, err
	}
	anchored := false
	if suffix, ok := requiredPrefix(re); ok {
		// RE2::Init matches a literal prefix after ^ by itself and compiles only the
		// rest, unanchored.
		re = suffix
	} else if stripAnchor(re, syntax.OpBeginText, true, 4) {
		anchored = true
	}
	stripAnchor(re, syntax.OpEndText, false, 4)
	c := &re2Compiler{cache: map[[4]int]int{}}
	f := c.compile(re.Simplify())
	match := c.add(iMatch)
	c.patch(f.ends, match)
	start, unanchored := f.begin, f.begin
	if !anchored {
		// Compiler::Compile prepends a non-greedy .*? loop over any byte.
		loop := c.add(iAlt)
		any := c.byteRange(0x00, 0xFF, false, loop)
		c.inst[loop].out, c.inst[loop].out1 = start, any
		unanchored = loop
	}
	return c.flatSize(start, unanchored), nil
}

// CheckRegex returns an error when Envoy would refuse pattern: invalid, or over
// RegexMaxProgramSize.
func CheckRegex(pattern string) error {
	n, err := RegexProgramSize(pattern)
	if err != nil {
		return fmt.Errorf("invalid regular expression %q: %v", pattern, err)
	}
	if n > RegexMaxProgramSize {
		return fmt.Errorf("regular expression %q compiles to an RE2 program of size %d, over the limit of %d that bearkong sets in every sidecar (re2.max_program_size.error_level)", pattern, n, RegexMaxProgramSize)
	}
	return nil
}

// requiredPrefix is RE2's Regexp::RequiredPrefix: ^ followed by a literal. It returns
// what follows the literal.
func requiredPrefix(re *syntax.Regexp) (*syntax.Regexp, bool) {
	if re.Op != syntax.OpConcat {
		return nil, false
	}
	i := 0
	for i < len(re.Sub) && re.Sub[i].Op == syntax.OpBeginText {
		i++
	}
	if i == 0 || i >= len(re.Sub) || re.Sub[i].Op != syntax.OpLiteral {
		return nil, false
	}
	i++
	if i == len(re.Sub) {
		return &syntax.Regexp{Op: syntax.OpEmptyMatch}, true
	}
	return &syntax.Regexp{Op: syntax.OpConcat, Sub: re.Sub[i:], Flags: re.Flags}, true
}

// stripAnchor is RE2's IsAnchorStart/IsAnchorEnd: it removes a leading \A (or trailing
// \z), looking into concatenations and captures, and reports whether it did.
func stripAnchor(re *syntax.Regexp, op syntax.Op, first bool, depth int) bool {
	if depth == 0 {
		return false
	}
	switch re.Op {
	case syntax.OpConcat:
		if len(re.Sub) == 0 {
			return false
		}
		i := len(re.Sub) - 1
		if first {
			i = 0
		}
		return stripAnchor(re.Sub[i], op, first, depth-1)
	case syntax.OpCapture:
		return stripAnchor(re.Sub[0], op, first, depth-1)
	case op:
		*re = syntax.Regexp{Op: syntax.OpEmptyMatch, Flags: re.Flags}
		return true
	}
	return false
}

type instOp uint8

const (
	iAlt instOp = iota
	iByte
	iCapture
	iEmpty
	iNop
	iMatch
)

type re2Inst struct {
	op        instOp
	out, out1 int // -1: not patched yet
	// lo, hi and fold are a byte range's, for the UTF-8 trie and cache.
	lo, hi int
	fold   bool
}

// hole is an out (or out1) field still to be patched.
type hole struct {
	inst   int
	second bool
}

type frag struct {
	begin int
	ends  []hole
}

// re2Compiler mirrors re2/compile.cc closely enough to count its instructions.
type re2Compiler struct {
	inst []re2Inst
	// cache holds the byte-range instructions RE2 shares between UTF-8 sequences
	// (CachedRuneByteSuffix), by (lo, hi, next).
	cache map[[4]int]int
}

func (c *re2Compiler) add(op instOp) int {
	c.inst = append(c.inst, re2Inst{op: op, out: -1, out1: -1})
	return len(c.inst) - 1
}

func (c *re2Compiler) byteInst(next int) int {
	i := c.add(iByte)
	c.inst[i].out = next
	return i
}

func (c *re2Compiler) patch(hs []hole, to int) {
	for _, h := range hs {
		if h.second {
			c.inst[h.inst].out1 = to
		} else {
			c.inst[h.inst].out = to
		}
	}
}

func (c *re2Compiler) nop() frag {
	i := c.add(iNop)
	return frag{i, []hole{{i, false}}}
}

func (c *re2Compiler) cat(a, b frag) frag {
	c.patch(a.ends, b.begin)
	return frag{a.begin, b.ends}
}

func (c *re2Compiler) alt(a, b frag) frag {
	i := c.add(iAlt)
	c.inst[i].out, c.inst[i].out1 = a.begin, b.begin
	return frag{i, append(append([]hole(nil), a.ends...), b.ends...)}
}

// star is x*: an Alt that loops through x. plus is x then that loop; quest an Alt
// around x.
func (c *re2Compiler) star(x frag) frag {
	i := c.add(iAlt)
	c.inst[i].out = x.begin
	c.patch(x.ends, i)
	return frag{i, []hole{{i, true}}}
}

func (c *re2Compiler) quest(x frag) frag {
	i := c.add(iAlt)
	c.inst[i].out = x.begin
	return frag{i, append(x.ends, hole{i, true})}
}

// nullable reports whether re matches the empty string.
func nullable(re *syntax.Regexp) bool {
	switch re.Op {
	case syntax.OpEmptyMatch, syntax.OpStar, syntax.OpQuest,
		syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText, syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		return true
	case syntax.OpCapture, syntax.OpPlus:
		return nullable(re.Sub[0])
	case syntax.OpConcat:
		for _, s := range re.Sub {
			if !nullable(s) {
				return false
			}
		}
		return true
	case syntax.OpAlternate:
		for _, s := range re.Sub {
			if nullable(s) {
				return true
			}
		}
	}
	return false
}

func (c *re2Compiler) compile(re *syntax.Regexp) frag {
	switch re.Op {
	case syntax.OpNoMatch, syntax.OpEmptyMatch:
		return c.nop()
	case syntax.OpLiteral:
		f := c.nop()
		for _, r := range re.Rune {
			f = c.cat(f, c.literal(r, re.Flags&syntax.FoldCase != 0))
		}
		return f
	case syntax.OpCharClass:
		return c.class(re.Rune)
	case syntax.OpAnyCharNotNL:
		return c.class([]rune{0, '\n' - 1, '\n' + 1, utf8.MaxRune})
	case syntax.OpAnyChar:
		return c.class([]rune{0, utf8.MaxRune})
	case syntax.OpBeginLine, syntax.OpEndLine, syntax.OpBeginText, syntax.OpEndText, syntax.OpWordBoundary, syntax.OpNoWordBoundary:
		i := c.add(iEmpty)
		return frag{i, []hole{{i, false}}}
	case syntax.OpCapture:
		open, closing := c.add(iCapture), c.add(iCapture)
		f := c.compile(re.Sub[0])
		c.inst[open].out = f.begin
		c.patch(f.ends, closing)
		return frag{open, []hole{{closing, false}}}
	case syntax.OpStar:
		x := c.compile(re.Sub[0])
		if nullable(re.Sub[0]) {
			// Compiler::Star: one Alt cannot keep the priorities right around a
			// nullable loop, so RE2 compiles x* as (x+)?.
			return c.quest(frag{x.begin, c.star(x).ends})
		}
		return c.star(x)
	case syntax.OpPlus:
		x := c.compile(re.Sub[0])
		return frag{x.begin, c.star(x).ends}
	case syntax.OpQuest:
		return c.quest(c.compile(re.Sub[0]))
	case syntax.OpConcat:
		if len(re.Sub) == 0 {
			return c.nop()
		}
		f := c.compile(re.Sub[0])
		for _, s := range re.Sub[1:] {
			f = c.cat(f, c.compile(s))
		}
		return f
	case syntax.OpAlternate:
		// RE2 builds a right-leaning chain of Alts; flattening makes the shape moot.
		f := c.compile(re.Sub[len(re.Sub)-1])
		for i := len(re.Sub) - 2; i >= 0; i-- {
			f = c.alt(c.compile(re.Sub[i]), f)
		}
		return f
	}
	// OpRepeat never survives Simplify.
	return c.nop()
}

// literal is one rune: one instruction per UTF-8 byte, or a single case-folding byte
// instruction for an ASCII letter under (?i).
func (c *re2Compiler) literal(r rune, fold bool) frag {
	if r < utf8.RuneSelf || fold && ('a' <= r && r <= 'z' || 'A' <= r && r <= 'Z') {
		i := c.byteInst(-1)
		return frag{i, []hole{{i, false}}}
	}
	var b [utf8.UTFMax]byte
	n := utf8.EncodeRune(b[:], r)
	f := c.nop()
	for range n {
		i := c.byteInst(-1)
		f = c.cat(f, frag{i, []hole{{i, false}}})
	}
	return f
}

// class compiles a character class (sorted lo, hi pairs) as Compiler::BeginRange,
// AddRuneRange and EndRange do: each range split into UTF-8 byte sequences, shared
// suffixes cached, and the sequences merged into a trie on their leading bytes.
func (c *re2Compiler) class(ranges []rune) frag {
	// Compiler::AddRuneRange's ASCII case-folding optimization: if the class treats A-Z
	// as it treats a-z, the ranges inside A-Z are dropped and the others fold.
	in := func(r rune) bool {
		for i := 0; i+1 < len(ranges); i += 2 {
			if ranges[i] <= r && r <= ranges[i+1] {
				return true
			}
		}
		return false
	}
	foldsASCII := true
	for r := 'a'; r <= 'z'; r++ {
		if in(r) != in(r-'a'+'A') {
			foldsASCII = false
			break
		}
	}
	// end stands for RE2's "0": the out of every last byte, patched to what follows.
	end := c.add(iNop)
	begin := -1
	add := func(id int) {
		if begin < 0 {
			begin = id
			return
		}
		begin = c.addSuffix(begin, id)
	}
	for i := 0; i+1 < len(ranges); i += 2 {
		lo, hi := ranges[i], ranges[i+1]
		if foldsASCII && 'A' <= lo && hi <= 'Z' {
			continue
		}
		c.runeRange(lo, hi, foldsASCII, end, add)
	}
	if begin < 0 {
		return frag{end, []hole{{end, false}}} // an empty class: matches nothing
	}
	return frag{begin, []hole{{end, false}}}
}

// runeRange is Compiler::AddRuneRangeUTF8: it splits lo..hi into sections whose UTF-8
// encodings have one length and agree on their leading bytes, and adds each section's
// byte sequence. In the forward direction RE2 caches the last byte and ranged middle
// bytes (shared between sequences), never the lead byte.
func (c *re2Compiler) runeRange(lo, hi rune, fold bool, end int, add func(int)) {
	if lo > hi {
		return
	}
	if lo == utf8.RuneSelf && hi == utf8.MaxRune {
		// Compiler::Add_80_10ffff: three lead bytes over a chain of continuation bytes.
		cont1 := c.byteRange(0x80, 0xBF, false, end)
		add(c.byteRange(0xC2, 0xDF, false, cont1))
		cont2 := c.byteRange(0x80, 0xBF, false, cont1)
		add(c.byteRange(0xE0, 0xEF, false, cont2))
		cont3 := c.byteRange(0x80, 0xBF, false, cont2)
		add(c.byteRange(0xF0, 0xF4, false, cont3))
		return
	}
	for _, max := range []rune{0x7F, 0x7FF, 0xFFFF} {
		if lo <= max && max < hi {
			c.runeRange(lo, max, fold, end, add)
			c.runeRange(max+1, hi, fold, end, add)
			return
		}
	}
	if hi < utf8.RuneSelf {
		add(c.byteRange(int(lo), int(hi), fold, end))
		return
	}
	n := utf8.RuneLen(lo)
	for i := 1; i < n; i++ {
		m := rune(1)<<(6*i) - 1
		if lo&^m != hi&^m {
			if lo&m != 0 {
				c.runeRange(lo, lo|m, fold, end, add)
				c.runeRange((lo|m)+1, hi, fold, end, add)
				return
			}
			if hi&m != m {
				c.runeRange(lo, (hi&^m)-1, fold, end, add)
				c.runeRange(hi&^m, hi, fold, end, add)
				return
			}
		}
	}
	var ulo, uhi [utf8.UTFMax]byte
	utf8.EncodeRune(ulo[:], lo)
	utf8.EncodeRune(uhi[:], hi)
	id := end
	for i := n - 1; i >= 0; i-- {
		if i == n-1 || 0 < i && ulo[i] < uhi[i] {
			key := [4]int{int(ulo[i]), int(uhi[i]), 0, id}
			if cached, ok := c.cache[key]; ok {
				id = cached
				continue
			}
			id = c.byteRange(int(ulo[i]), int(uhi[i]), false, id)
			c.cache[key] = id
			continue
		}
		id = c.byteRange(int(ulo[i]), int(uhi[i]), false, id)
	}
	add(id)
}

func (c *re2Compiler) byteRange(lo, hi int, fold bool, next int) int {
	i := c.byteInst(next)
	c.inst[i].lo, c.inst[i].hi, c.inst[i].fold = lo, hi, fold
	return i
}

func (c *re2Compiler) sameRange(a, b int) bool {
	x, y := c.inst[a], c.inst[b]
	return x.op == iByte && y.op == iByte && x.lo == y.lo && x.hi == y.hi && x.fold == y.fold
}

func (c *re2Compiler) cached(id int) bool {
	in := c.inst[id]
	_, ok := c.cache[[4]int{in.lo, in.hi, b2i(in.fold), in.out}]
	return ok
}

func b2i(b bool) int {
	if b {
		return 1
	}
	return 0
}

// addSuffix is Compiler::AddSuffixRecursive: it adds the byte sequence id to the trie
// at root, merging it into the newest branch when their leading byte ranges are equal.
func (c *re2Compiler) addSuffix(root, id int) int {
	parent, br := -1, root
	switch c.inst[root].op {
	case iByte:
	case iAlt:
		parent, br = root, c.inst[root].out1
	default:
		br = -1
	}
	if br < 0 || !c.sameRange(br, id) {
		a := c.add(iAlt)
		c.inst[a].out, c.inst[a].out1 = root, id
		return a
	}
	if c.cached(br) {
		// A cached instruction is shared: merge into a copy of it.
		clone := c.byteRange(c.inst[br].lo, c.inst[br].hi, c.inst[br].fold, c.inst[br].out)
		br = clone
		if parent < 0 {
			root = br
		} else {
			c.inst[parent].out1 = br
		}
	}
	c.inst[br].out = c.addSuffix(c.inst[br].out, c.inst[id].out)
	return root
}

// flatSize is the size of the program after Prog::Optimize and Prog::Flatten: every
// instruction reachable from the start that is not an Alt or a Nop, plus, for each
// "list" (the instructions one root reaches through Alts), one Nop for every other list
// it reaches, plus the Fail instruction at 0.
func (c *re2Compiler) flatSize(start, unanchored int) int {
	skip := func(i int) int {
		for n := 0; i >= 0 && c.inst[i].op == iNop && n < len(c.inst); n++ {
			i = c.inst[i].out
		}
		return i
	}
	roots := map[int]bool{skip(start): true, skip(unanchored): true}
	// Every instruction that consumes or records something starts a list after it.
	seen := map[int]bool{}
	stack := []int{skip(unanchored), skip(start)}
	for len(stack) > 0 {
		i := stack[len(stack)-1]
		stack = stack[:len(stack)-1]
		if i < 0 || seen[i] {
			continue
		}
		seen[i] = true
		in := c.inst[i]
		switch in.op {
		case iAlt:
			stack = append(stack, skip(in.out), skip(in.out1))
		case iByte, iCapture, iEmpty:
			roots[skip(in.out)] = true
			stack = append(stack, skip(in.out))
		}
	}
	delete(roots, -1)
	// closure returns what a root reaches through Alts: the instructions of its list,
	// and the other roots it refers to.
	closure := func(root int) (members, refs map[int]bool) {
		members, refs = map[int]bool{}, map[int]bool{}
		stack := []int{root}
		for len(stack) > 0 {
			i := stack[len(stack)-1]
			stack = stack[:len(stack)-1]
			if i < 0 || members[i] || refs[i] {
				continue
			}
			if i != root && roots[i] {
				refs[i] = true
				continue
			}
			members[i] = true
			if in := c.inst[i]; in.op == iAlt {
				stack = append(stack, skip(in.out), skip(in.out1))
			}
		}
		return members, refs
	}
	// Prog::MarkDominator: an instruction that two lists reach becomes a list of its
	// own, which both refer to.
	for changed := true; changed; {
		changed = false
		owner := map[int]int{}
		for r := range roots {
			m, _ := closure(r)
			for i := range m {
				if i == r {
					continue
				}
				if o, ok := owner[i]; ok && o != r && !roots[i] {
					roots[i] = true
					changed = true
				}
				owner[i] = r
			}
		}
	}
	size := 1 // the Fail instruction
	for r := range roots {
		m, refs := closure(r)
		for i := range m {
			if c.inst[i].op != iAlt {
				size++
			}
		}
		size += len(refs)
	}
	return size
}
