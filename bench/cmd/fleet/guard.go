package main

import (
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"
)

// children are the server processes running, for guardMemory.
var children struct {
	sync.Mutex
	pids map[int]bool
}

func addChild(pid int) {
	children.Lock()
	defer children.Unlock()
	if children.pids == nil {
		children.pids = map[int]bool{}
	}
	children.pids[pid] = true
}

func removeChild(pid int) {
	children.Lock()
	defer children.Unlock()
	delete(children.pids, pid)
}

// guardMemory stops the whole run, server processes first, as soon as the machine's
// available memory drops below min: a benchmark must not take a shared machine down
// (an N=5000 run once grew the simulator to 23 GB and froze it).
func guardMemory(done interface{ Done() <-chan struct{} }, min uint64) {
	if min == 0 {
		return
	}
	t := time.NewTicker(250 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-done.Done():
			return
		case <-t.C:
		}
		avail, ok := memAvailable()
		if !ok || avail >= min {
			continue
		}
		logf("MEMORY GUARD: MemAvailable %d MiB < %d MiB: stopping the run", avail>>20, min>>20)
		children.Lock()
		for pid := range children.pids {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
		children.Unlock()
		os.Exit(3)
	}
}

// memAvailable reads MemAvailable from /proc/meminfo, in bytes.
func memAvailable() (uint64, bool) {
	b, err := os.ReadFile("/proc/meminfo")
	if err != nil {
		return 0, false
	}
	for l := range strings.Lines(string(b)) {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemAvailable:" {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			return kb << 10, err == nil
		}
	}
	return 0, false
}
