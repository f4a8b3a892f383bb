package sim

import (
	"hash/maphash"
	"strings"
	"sync"
)

// sym is a string interned for the whole fleet: a resource name, a version, or (as a
// symList) a list of names. A client's cache is then maps of numbers, which hold no
// pointer for the GC to scan and no copy of a string another client holds too. At
// N=5000 the clients' caches of string-keyed maps were about 1.3 MB each, 6.6 GB for the
// fleet, and collecting them took most of the simulator's CPU on every change; an Envoy
// holds its own cache, and so does each client here, in a form that costs what the
// protocol state is, not what Go's strings cost. The zero sym is "".
type sym uint32

// symList is an interned list of names (a listener's or a scope's route configurations);
// the zero symList is the empty list.
type symList uint32

// symShards spreads interning over locks: thousands of clients intern at once.
const symShards = 64

type symTable[T any] struct {
	shards [symShards]struct {
		sync.RWMutex
		ids  map[string]uint32
		vals []T
	}
}

// lookup returns the id of key, adding it with the value mk(key) if new. The id holds
// the shard in its low bits and the index in the shard above them; 0 is kept for "".
func (t *symTable[T]) lookup(key string, mk func(string) T) uint32 {
	if key == "" {
		return 0
	}
	i := uint32(maphashString(key) % symShards)
	sh := &t.shards[i]
	sh.RLock()
	id, ok := sh.ids[key]
	sh.RUnlock()
	if ok {
		return id
	}
	sh.Lock()
	defer sh.Unlock()
	if id, ok := sh.ids[key]; ok {
		return id
	}
	if sh.ids == nil {
		sh.ids = map[string]uint32{}
	}
	// Index 0 of shard 0 would be id 0: start every shard at 1.
	if len(sh.vals) == 0 {
		var zero T
		sh.vals = append(sh.vals, zero)
	}
	key = strings.Clone(key) // the caller's key may alias a message buffer
	id = uint32(len(sh.vals))*symShards + i
	sh.vals = append(sh.vals, mk(key))
	sh.ids[key] = id
	return id
}

// lookupBytes is lookup for a key in bytes, without a string for the usual hit.
func (t *symTable[T]) lookupBytes(key []byte, mk func(string) T) uint32 {
	if len(key) == 0 {
		return 0
	}
	i := uint32(maphashBytes(key) % symShards)
	sh := &t.shards[i]
	sh.RLock()
	id, ok := sh.ids[string(key)]
	sh.RUnlock()
	if ok {
		return id
	}
	return t.lookup(string(key), mk)
}

func (t *symTable[T]) value(id uint32) T {
	if id == 0 {
		var zero T
		return zero
	}
	sh := &t.shards[id%symShards]
	sh.RLock()
	v := sh.vals[id/symShards]
	sh.RUnlock()
	return v
}

var (
	syms  symTable[string]
	lists symTable[[]sym]
)

func self(s string) string { return s }

// intern returns the sym of s.
func intern(s string) sym { return sym(syms.lookup(s, self)) }

// internBytes returns the sym of the string b holds.
func internBytes(b []byte) sym { return sym(syms.lookupBytes(b, self)) }

// internString returns s as the fleet's one copy of it.
func internString(s string) string { return intern(s).String() }

func (s sym) String() string { return syms.value(uint32(s)) }

// internList returns the symList of names, in their order.
func internList(names []string) symList {
	switch len(names) {
	case 0:
		return 0
	case 1:
		// A scope names one route configuration: the key is the name itself, with no
		// string built.
		return symList(lists.lookup(names[0], splitList))
	}
	return symList(lists.lookup(strings.Join(names, "\x00"), splitList))
}

func splitList(key string) []sym {
	parts := strings.Split(key, "\x00")
	out := make([]sym, len(parts))
	for i, p := range parts {
		out[i] = intern(p)
	}
	return out
}

// syms returns the names of l; shared, read-only.
func (l symList) syms() []sym { return lists.value(uint32(l)) }

func maphashString(s string) uint64 { return maphash.String(memoSeed, s) }
func maphashBytes(b []byte) uint64  { return maphash.Bytes(memoSeed, b) }

// version is an interned (version, hash) pair: what a client's cache holds of a
// resource, in four bytes. The zero version is no version.
type version uint32

// held is what a version stands for: the version the server gave and the hash of the
// bytes.
type held struct {
	version sym
	hash    uint64
}

var versions struct {
	shards [symShards]struct {
		sync.RWMutex
		ids  map[held]uint32
		vals []held
	}
}

func internVersion(h held) version {
	i := uint32((uint64(h.version)*0x9e3779b97f4a7c15 ^ h.hash) % symShards)
	sh := &versions.shards[i]
	sh.RLock()
	id, ok := sh.ids[h]
	sh.RUnlock()
	if ok {
		return version(id)
	}
	sh.Lock()
	defer sh.Unlock()
	if id, ok := sh.ids[h]; ok {
		return version(id)
	}
	if sh.ids == nil {
		sh.ids = map[held]uint32{}
		sh.vals = append(sh.vals, held{}) // id 0 is no version
	}
	id = uint32(len(sh.vals))*symShards + i
	sh.vals = append(sh.vals, h)
	sh.ids[h] = id
	return version(id)
}

func (v version) held() held {
	if v == 0 {
		return held{}
	}
	sh := &versions.shards[v%symShards]
	sh.RLock()
	h := sh.vals[v/symShards]
	sh.RUnlock()
	return h
}
