package controlplane

import (
	"net"
	"time"

	"github.com/bearkong/bearkong/pkg/ads"
)

// xdsListener sets, on every xDS connection it accepts, a TCP user timeout of the send
// timeout (opts.Limits.SendTimeout), apart from the keepalive timeout.
//
// Why: the TCP user timeout is how long the kernel keeps a connection whose data goes
// unacknowledged, and on Linux also one whose peer's window stays closed (an Envoy too
// busy to read during a large push; tcp(7), TCP_USER_TIMEOUT). grpc-go sets it to the
// keepalive timeout on every *net.TCPConn it serves, so a proxy that could not read for
// 10 s was cut and had to resync from scratch. The send timeout is bearkong's own bound
// for a proxy that does not take a response, so the socket gets the same time. The
// accepted connection is handed to gRPC wrapped, not as a *net.TCPConn, so that grpc-go
// leaves the option as set here (TestSlowReaderNotCut).
func xdsListener(l net.Listener, opts Options) net.Listener {
	timeout := opts.Limits.SendTimeout
	if timeout <= 0 {
		timeout = ads.DefaultSendTimeout
	}
	return userTimeoutListener{Listener: l, timeout: timeout}
}

type userTimeoutListener struct {
	net.Listener
	timeout time.Duration
}

func (l userTimeoutListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c, nil
	}
	if err := setUserTimeout(tc, l.timeout); err != nil {
		// grpc-go closes a connection whose option it cannot set; do the same rather
		// than serve a socket with a timeout other than the documented one.
		c.Close()
		return nil, err
	}
	return userTimeoutConn{c}, nil
}

// userTimeoutConn hides the *net.TCPConn from grpc-go (see xdsListener).
type userTimeoutConn struct{ net.Conn }
