//go:build !linux

package controlplane

import (
	"net"
	"time"
)

// setUserTimeout does nothing where TCP_USER_TIMEOUT is Linux's alone; grpc-go sets it
// on Linux only too.
func setUserTimeout(*net.TCPConn, time.Duration) error { return nil }
