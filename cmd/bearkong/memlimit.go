package main

import (
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"runtime/debug"
	"strconv"
	"strings"
)

// cgroupFiles are the files that hold the container's memory limit: cgroup v2's, and
// cgroup v1's memory controller's. Inside a container, each is the container's own
// cgroup (the cgroup namespace, or the runtime's bind mount for v1).
// https://docs.kernel.org/admin-guide/cgroup-v2.html#memory-interface-files
type cgroupFiles struct{ V2, V1 string }

var defaultCgroupFiles = cgroupFiles{V2: "/sys/fs/cgroup/memory.max", V1: "/sys/fs/cgroup/memory/memory.limit_in_bytes"}

// memoryLimitShare is the part of the container's limit that the Go runtime may use.
// GOMEMLIMIT bounds only what the Go runtime manages (heap, stacks, its own metadata),
// while the cgroup also charges the kernel's memory for the process: socket buffers of
// thousands of xDS connections, page cache, the binary's pages. And the runtime returns
// freed pages to the OS in the background, so RSS lags the heap. The rest of the limit
// is headroom for those, so that the GC works harder before the kernel kills the
// container, not after.
const memoryLimitShare = 0.9

// noLimitFrom: a cgroup v1 limit this large is no limit. v1 reports "no limit" as the
// largest page-aligned int64 (9223372036854771712 with 4 KiB pages); no machine has a
// quarter of that.
const noLimitFrom = 1 << 62

// setMemoryLimit gives the Go runtime a memory limit that follows the container's:
// unless GOMEMLIMIT is set (the runtime has read it, and it wins), memoryLimitShare of
// the cgroup's limit. It logs what it chose, once.
//
// Why: the Go runtime does not read cgroup limits. Without a limit, the GC lets the heap
// grow to GOGC% past the live heap between collections, whatever the container allows:
// a full push to every proxy could take the process past its limit, and the kernel
// kills it, although a collection would have freed enough. With one, the GC collects
// sooner as the heap nears it.
func setMemoryLimit(log *slog.Logger, getenv func(string) string, files cgroupFiles) {
	if v := getenv("GOMEMLIMIT"); v != "" {
		log.Info("Go memory limit from GOMEMLIMIT", "source", "GOMEMLIMIT", "GOMEMLIMIT", v, "limit_bytes", debug.SetMemoryLimit(-1))
		return
	}
	limit, source, err := cgroupMemoryLimit(files)
	switch {
	case err != nil:
		log.Warn("cannot read the container's memory limit; the Go runtime runs without one (set GOMEMLIMIT to give it one)", "err", err)
	case limit == 0:
		log.Info("no container memory limit; the Go runtime runs without one", "source", "none")
	default:
		goLimit := int64(float64(limit) * memoryLimitShare)
		debug.SetMemoryLimit(goLimit)
		log.Info("Go memory limit set from the container's", "source", source, "container_limit_bytes", limit, "limit_bytes", goLimit)
	}
}

// cgroupMemoryLimit returns the container's memory limit in bytes, 0 when there is none,
// and which cgroup version it came from. Missing files mean no limit: not in a cgroup
// with a memory controller, or not on Linux.
func cgroupMemoryLimit(files cgroupFiles) (limit int64, source string, err error) {
	for _, f := range []struct{ path, source string }{{files.V2, "v2"}, {files.V1, "v1"}} {
		b, err := os.ReadFile(f.path)
		if errors.Is(err, fs.ErrNotExist) {
			continue
		}
		if err != nil {
			return 0, "", err
		}
		s := strings.TrimSpace(string(b))
		if f.source == "v2" && s == "max" {
			return 0, "", nil
		}
		n, err := strconv.ParseInt(s, 10, 64)
		if err != nil || n <= 0 {
			return 0, "", fmt.Errorf("%s: %q is not a memory limit", f.path, s)
		}
		if n >= noLimitFrom {
			return 0, "", nil
		}
		return n, f.source, nil
	}
	return 0, "", nil
}
