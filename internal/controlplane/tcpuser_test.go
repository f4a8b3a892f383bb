package controlplane

import (
	"context"
	"errors"
	"io"
	"net"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/protobuf/types/known/emptypb"
	"google.golang.org/protobuf/types/known/wrapperspb"

	"github.com/bearkong/bearkong/pkg/ads"
)

// TestSlowReaderNotCut: a proxy that stops reading in the middle of a large push, for
// longer than the keepalive timeout but less than the send timeout, gets the whole push
// when it reads again. Over a real loopback socket: the proxy's receive buffer fills,
// its TCP window closes and the server's socket probes it; with the keepalive timeout as
// the socket's TCP user timeout (grpc-go's default) the kernel cut the connection after
// it (issue 14: "read: connection timed out" during a full push at N=5000).
func TestSlowReaderNotCut(t *testing.T) {
	const keepalive, sendTimeout, pause = time.Second, 10 * time.Second, 4 * time.Second
	const messages, size = 32, 1 << 20 // far more than the two sockets' buffers hold
	opts := Options{KeepaliveTimeout: keepalive, Limits: ads.Limits{SendTimeout: sendTimeout}}
	g := newXDSServer(opts)
	g.RegisterService(&grpc.ServiceDesc{
		ServiceName: "bearkong.test.Bulk",
		HandlerType: (*any)(nil),
		Streams: []grpc.StreamDesc{{StreamName: "Get", ServerStreams: true, Handler: func(_ any, s grpc.ServerStream) error {
			if err := s.RecvMsg(&emptypb.Empty{}); err != nil {
				return err
			}
			for range messages {
				if err := s.SendMsg(wrapperspb.Bytes(make([]byte, size))); err != nil {
					return err
				}
			}
			return nil
		}}},
	}, struct{}{})
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(xdsListener(lis, opts))
	t.Cleanup(g.Stop)

	var conn atomic.Pointer[gatedConn]
	dialer := net.Dialer{Control: func(_, _ string, rc syscall.RawConn) error {
		var err error
		if cerr := rc.Control(func(fd uintptr) {
			// A small receive buffer: the window closes soon after the proxy stops reading.
			err = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, syscall.SO_RCVBUF, 4096)
		}); cerr != nil {
			return cerr
		}
		return err
	}}
	cc, err := grpc.NewClient("passthrough:///"+lis.Addr().String(),
		grpc.WithTransportCredentials(insecure.NewCredentials()),
		// Windows large enough that HTTP/2 flow control never stops the server: only
		// TCP's window does, as when an Envoy is too busy to read its socket.
		grpc.WithInitialWindowSize(1<<30), grpc.WithInitialConnWindowSize(1<<30),
		grpc.WithContextDialer(func(ctx context.Context, addr string) (net.Conn, error) {
			c, err := dialer.DialContext(ctx, "tcp", addr)
			if err != nil {
				return nil, err
			}
			gc := &gatedConn{Conn: c}
			conn.Store(gc)
			return gc, nil
		}))
	if err != nil {
		t.Fatal(err)
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	stream, err := cc.NewStream(ctx, &grpc.StreamDesc{ServerStreams: true}, "/bearkong.test.Bulk/Get")
	if err != nil {
		t.Fatal(err)
	}
	if err := stream.SendMsg(&emptypb.Empty{}); err != nil {
		t.Fatal(err)
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatal(err)
	}
	got := 0
	for ; got < messages; got++ {
		var m wrapperspb.BytesValue
		if err := stream.RecvMsg(&m); err != nil {
			t.Fatalf("message %d of %d, after the proxy paused reading for %v (keepalive timeout %v, send timeout %v): %v",
				got+1, messages, pause, keepalive, sendTimeout, err)
		}
		if len(m.Value) != size {
			t.Fatalf("message %d: %d bytes, want %d", got+1, len(m.Value), size)
		}
		if got == 0 {
			conn.Load().pauseFor(pause)
		}
	}
	if err := stream.RecvMsg(&emptypb.Empty{}); !errors.Is(err, io.EOF) {
		t.Fatalf("after %d messages: %v, want the end of the stream", got, err)
	}
}

// gatedConn is a client connection whose reads can be held back, as by a busy proxy.
type gatedConn struct {
	net.Conn
	mu    sync.Mutex
	until time.Time
}

func (c *gatedConn) pauseFor(d time.Duration) {
	c.mu.Lock()
	c.until = time.Now().Add(d)
	c.mu.Unlock()
}

func (c *gatedConn) Read(b []byte) (int, error) {
	c.mu.Lock()
	wait := time.Until(c.until)
	c.mu.Unlock()
	if wait > 0 {
		time.Sleep(wait)
	}
	return c.Conn.Read(b)
}
