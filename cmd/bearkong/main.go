// Command bearkong is a small service-mesh control plane for Envoy sidecars on Kubernetes.
//
//	bearkong cp         run the control plane (Kubernetes -> xDS)
//	bearkong bootstrap  print the Envoy bootstrap every sidecar uses
//	bearkong status     show every proxy's xDS state (status.go)
//	bearkong config     show, or compare with Envoy, a proxy's config (config.go)
//	bearkong version    print the version
package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/tls"
	"encoding/hex"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"math"
	"net"
	"os"
	"os/signal"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"k8s.io/klog/v2"

	"github.com/bearkong/bearkong/internal/controlplane"
	"github.com/bearkong/bearkong/pkg/ads"
	"github.com/bearkong/bearkong/pkg/ca"
	"github.com/bearkong/bearkong/pkg/discovery"
	"github.com/bearkong/bearkong/pkg/mesh"
	"github.com/bearkong/bearkong/pkg/translate"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

const usage = `bearkong: a small service-mesh control plane for Envoy sidecars on Kubernetes.

Usage:
  bearkong cp [flags]         run the control plane (see 'bearkong cp -h')
  bearkong bootstrap [flags]  print the Envoy bootstrap for a sidecar (see 'bearkong bootstrap -h')
  bearkong status [pod]       every proxy's xDS state, or one proxy's (see 'bearkong status -h')
  bearkong config <pod>       a proxy's config, or --diff against its Envoy (see 'bearkong config -h')
  bearkong version            print the version
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, os.Args[1:], os.Stdout, os.Stderr); err != nil {
		if !errors.Is(err, flag.ErrHelp) {
			fmt.Fprintln(os.Stderr, "bearkong:", err)
		}
		os.Exit(2)
	}
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return errors.New("missing command")
	}
	switch args[0] {
	case "cp":
		return runCP(ctx, args[1:], stderr)
	case "bootstrap":
		return runBootstrap(args[1:], stdout, stderr)
	case "status":
		return runStatus(ctx, args[1:], stdout, stderr)
	case "config":
		return runConfig(ctx, args[1:], stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, "bearkong", version)
		return nil
	case "-h", "--help", "help":
		fmt.Fprint(stdout, usage)
		return nil
	}
	fmt.Fprint(stderr, usage)
	return fmt.Errorf("unknown command %q", args[0])
}

func runCP(ctx context.Context, args []string, stderr io.Writer) error {
	fs := flag.NewFlagSet("bearkong cp", flag.ContinueOnError)
	fs.SetOutput(stderr)
	kubeconfig := fs.String("kubeconfig", "", "path to a kubeconfig; default: in-cluster config, then $KUBECONFIG, then ~/.kube/config")
	xdsAddr := fs.String("xds-addr", ":5000", "host:port for the ADS gRPC server")
	httpAddr := fs.String("http-addr", ":9000", "host:port for /metrics, /debug/streams, /healthz and /readyz")
	quiet := fs.Duration("quiet-period", 100*time.Millisecond, "coalescing: wait this long after the last Kubernetes event before building a snapshot")
	maxDelay := fs.Duration("max-delay", time.Second, "coalescing: never wait longer than this after the first event of a burst")
	resync := fs.Duration("resync-period", 10*time.Minute, "informer resync period (0 disables); resyncs never cause xDS pushes")
	drain := fs.Duration("drain-timeout", 5*time.Second, "on shutdown, how long xDS streams may take before they are cut")
	clusterDomain := fs.String("cluster-domain", translate.DefaultClusterDomain, "the cluster's DNS domain: the outbound listener takes 'service: <name>.<namespace>.svc.<cluster-domain>'")
	xdsInsecure := fs.Bool("xds-insecure", false, "serve xDS in plaintext and believe any node's claim: development only")
	tokenAudience := fs.String("xds-token-audience", defaultTokenAudience, "audience the proxies' ServiceAccount tokens must be issued for")
	trustDomain := fs.String("trust-domain", ca.DefaultTrustDomain, "SPIFFE trust domain of the workload identities: spiffe://<trust-domain>/ns/<namespace>/sa/<serviceaccount>")
	caSecret := fs.String("ca-secret", envOr("POD_NAMESPACE", "bearkong-system")+"/bearkong-ca", "namespace/name of the Secret that holds the CA: created with a new root on first start unless it exists (bring your own by creating it first)")
	// High availability: every replica serves xDS; the holder of a Lease writes to the
	// API (README, "High availability").
	leaderElect := fs.Bool("leader-elect", true, "elect one writer among the replicas with a coordination.k8s.io Lease: only its holder writes Events, statuses and the CA root ConfigMaps, and every replica serves xDS; false makes this replica write unconditionally (one-replica development setups only: two such replicas would write everything twice)")
	leNamespace := fs.String("leader-election-namespace", envOr("POD_NAMESPACE", "bearkong-system"), "namespace of the leader-election Lease (default $POD_NAMESPACE, else bearkong-system)")
	leName := fs.String("leader-election-name", "bearkong", "name of the leader-election Lease (coordination.k8s.io/v1)")
	leIdentity := fs.String("leader-election-identity", "", "this replica's identity in the Lease; must differ between replicas (default $POD_NAME, else the hostname, followed by _ and 8 random hex digits)")
	leLease := fs.Duration("leader-election-lease-duration", discovery.DefaultLeaseDuration, "how long the other replicas wait after the leader's last renewal before they take the Lease")
	leRenew := fs.Duration("leader-election-renew-deadline", discovery.DefaultRenewDeadline, "how long the leader keeps trying to renew the Lease before it stops writing")
	leRetry := fs.Duration("leader-election-retry-period", discovery.DefaultRetryPeriod, "interval between tries to take or renew the Lease")
	certLifetime := fs.Duration("cert-lifetime", 24*time.Hour, "lifetime of the workload and xDS server certificates, a whole even number of seconds; they rotate at half of it")
	defaultMTLS := fs.String("default-mtls", string(mesh.MTLSStrict), "mutual-TLS mode where no Service or Namespace annotation mesh-mtls says otherwise: STRICT, PERMISSIVE or DISABLE")
	defaultAccessLog := fs.String("default-access-log", string(mesh.AccessLogOff), "access-log format of the Services without a mesh-access-log annotation: json, text or off")
	defaultAuthz := fs.String("default-authz", "allow", "what a meshed Service with no ALLOW AuthorizationPolicy does with requests: allow, or deny every one (default deny, zero trust)")
	serverNames := fs.String("xds-server-names", "", "comma-separated DNS names and IPs of the xDS server certificate (default bearkong.<namespace>.svc, bearkong.<namespace>.svc.<cluster-domain>, and the host of --xds-addr when it is an IP)")
	// Limits on what one xDS client can make the control plane hold, log or do (README,
	// "Limits"); the defaults are ads.Default*.
	maxNodeID := fs.Int("xds-max-node-id-bytes", ads.DefaultMaxNodeIDBytes, "longest node id accepted; a longer one is refused with InvalidArgument")
	maxNodeMeta := fs.Int("xds-max-node-metadata-bytes", ads.DefaultMaxNodeMetadataBytes, "largest node metadata accepted, serialized; larger is refused with InvalidArgument")
	maxNames := fs.Int("xds-max-resource-names", ads.DefaultMaxResourceNames, "most resource names in one DiscoveryRequest; more is refused with InvalidArgument (bearkong's EDS and RDS subscriptions name one resource per Service)")
	maxNodeStreams := fs.Int("xds-max-streams-per-node", ads.DefaultMaxStreamsPerNode, "most xDS streams open at once with one node id; a new one beyond is refused with ResourceExhausted")
	maxStreams := fs.Int("xds-max-streams", ads.DefaultMaxStreams, "most xDS streams open at once; a new one beyond is refused with ResourceExhausted")
	maxNack := fs.Int("xds-max-nack-detail-bytes", ads.DefaultMaxNackDetailBytes, "how much of a NACK's error_detail is kept, logged and shown in /debug/streams; the rest is cut")
	sendTimeout := fs.Duration("xds-send-timeout", ads.DefaultSendTimeout, "a stream whose proxy does not take a response within this is closed with DeadlineExceeded")
	maxConnStreams := fs.Uint("xds-max-concurrent-streams-per-connection", ads.DefaultMaxConcurrentStreamsPerConnection, "HTTP/2 SETTINGS_MAX_CONCURRENT_STREAMS of each xDS connection (Envoy uses one ADS stream per connection)")
	logLevel := fs.String("log-level", "info", "debug, info, warn or error")
	logFormat := fs.String("log-format", "text", "text or json; client-go's own log lines (klog) go through the same logger")
	// Operability (README, "Running the control plane" and "Reconnects").
	debugAddr := fs.String("debug-addr", defaultDebugAddr, "host:port of a listener of its own serving Go's profiles (net/http/pprof) under /debug/pprof/; empty disables. Loopback by default: reach it with kubectl port-forward. The default, when another process holds it (a second bearkong on one host), is skipped with a warning; an address given is required")
	kubeQPS := fs.Float64("kube-api-qps", discovery.DefaultKubeAPIQPS, "requests per second each Kubernetes client may make (client-side rate limit)")
	kubeBurst := fs.Int("kube-api-burst", discovery.DefaultKubeAPIBurst, "burst of requests each Kubernetes client may make above --kube-api-qps")
	promURL := fs.String("prometheus-url", "", "base URL of a Prometheus that scrapes the sidecars (e.g. http://prometheus.monitoring.svc:9090): the page at /debug/ and /debug/signals then show each Service's request rate, error rate and p99 latency; empty shows none")
	connAge := fs.Duration("xds-max-connection-age", 30*time.Minute, "close each xDS connection after about this long (±10%), so that proxies reconnect and spread over the replicas after a rollout; the proxy keeps its config meanwhile. 0 disables")
	connAgeGrace := fs.Duration("xds-max-connection-age-grace", 10*time.Second, "after --xds-max-connection-age, how long the connection's streams may go on before the connection is cut")
	// Testing only, and left out of the usage: it lets an HTTPRoute opt out of
	// bearkong's regex checks (discovery.SkipValidationAnnotation), so that the tests
	// can send the proxies a config they reject and watch the quarantine work.
	skipValidation := fs.Bool(unsafeSkipValidationFlag, false, "")
	// Testing only, hidden too: the test hooks of internal/controlplane/testhooks.go on
	// the debug listener, which pause a proxy or make it NACK (README, "From the command line").
	testHooks := fs.Bool(unsafeTestHooksFlag, false, "")
	fs.Usage = func() { usageWithout(fs, unsafeSkipValidationFlag, unsafeTestHooksFlag) }
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("cp takes no arguments, got %q", fs.Args())
	}
	log, err := newLogger(stderr, *logLevel, *logFormat)
	if err != nil {
		return err
	}
	bridgeKlog(log)
	kubeOpts, err := parseKubeClient(*kubeconfig, *kubeQPS, *kubeBurst)
	if err != nil {
		return err
	}
	if *connAge < 0 || *connAgeGrace < 0 {
		return fmt.Errorf("--xds-max-connection-age (%s) and --xds-max-connection-age-grace (%s) must not be negative", *connAge, *connAgeGrace)
	}
	if *quiet <= 0 || *maxDelay < *quiet {
		return fmt.Errorf("need 0 < --quiet-period (%s) <= --max-delay (%s)", *quiet, *maxDelay)
	}
	if err := translate.ValidateClusterDomain(*clusterDomain); err != nil {
		return fmt.Errorf("--cluster-domain: %w", err)
	}
	limits, err := parseLimits(map[string]int{
		"xds-max-node-id-bytes": *maxNodeID, "xds-max-node-metadata-bytes": *maxNodeMeta,
		"xds-max-resource-names": *maxNames, "xds-max-streams-per-node": *maxNodeStreams,
		"xds-max-streams": *maxStreams, "xds-max-nack-detail-bytes": *maxNack,
	}, *sendTimeout, *maxConnStreams)
	if err != nil {
		return err
	}
	sec, err := parseCPSecurity(*xdsInsecure, *tokenAudience, *serverNames, *xdsAddr, envOr("POD_NAMESPACE", "bearkong-system"), *clusterDomain)
	if err != nil {
		return err
	}
	mode := mesh.MTLSMode(*defaultMTLS)
	if err := translate.ValidateMTLSMode(mode); err != nil {
		return fmt.Errorf("--default-mtls: %w", err)
	}
	// defaultDeny is the mesh-wide authorization default, for translate.Options.DefaultDeny:
	// with it, a Service with no enforced ALLOW policy denies every request.
	defaultDeny, err := parseDefaultAuthz(*defaultAuthz)
	if err != nil {
		return err
	}
	accessLog, err := mesh.ParseAccessLogFormat(*defaultAccessLog)
	if err != nil {
		return fmt.Errorf("--default-access-log: %w", err)
	}
	if err := translate.ValidateTrustDomain(*trustDomain); err != nil {
		return fmt.Errorf("--trust-domain: %w", err)
	}
	caNS, caName, ok := strings.Cut(*caSecret, "/")
	if !ok || caNS == "" || caName == "" || strings.Contains(caName, "/") {
		return fmt.Errorf("--ca-secret %q: want namespace/name", *caSecret)
	}
	var election *discovery.LeaderElectionConfig
	if *leaderElect {
		id := *leIdentity
		if id == "" {
			if id, err = defaultIdentity(); err != nil {
				return err
			}
		}
		election = &discovery.LeaderElectionConfig{Namespace: *leNamespace, Name: *leName, Identity: id,
			LeaseDuration: *leLease, RenewDeadline: *leRenew, RetryPeriod: *leRetry}
		if err := discovery.ValidateLeaderElection(election); err != nil {
			return fmt.Errorf("--leader-election-*: %w", err)
		}
	}
	// Before the informers and the first push, which are what grows the heap.
	setMemoryLimit(log, os.Getenv, defaultCgroupFiles)
	client, gateway, err := discovery.NewClients(kubeOpts)
	if err != nil {
		return err
	}
	authz, err := discovery.NewAuthzClient(kubeOpts)
	if err != nil {
		return err
	}
	// The CA comes first: without it no proxy can get a certificate, and the xDS server
	// has none to serve. Every replica loads the same Secret.
	authority, err := ca.LoadOrCreate(ctx, discovery.CASecretStore{Client: client, Namespace: caNS, Name: caName},
		ca.Options{TrustDomain: *trustDomain, LeafLifetime: *certLifetime})
	if err != nil {
		return fmt.Errorf("certificate authority (Secret %s): %w", *caSecret, err)
	}
	reg := controlplane.NewRegistry()
	disc := discovery.New(client, discovery.Options{
		QuietPeriod: *quiet, MaxDelay: *maxDelay, ResyncPeriod: *resync, Logger: log, Registerer: reg,
		GatewayClient: gateway, AuthzClient: authz, AllowSkipValidation: *skipValidation, DefaultMTLS: mode,
		LeaderElection: election,
	})
	roots := discovery.NewRootPublisher(client, discovery.RootPublisherOptions{Logger: log, Registerer: reg, Leadership: disc.Leadership()})
	publish := publishRoots(ctx, roots, authority.Bundle(), log)
	opts := controlplane.Options{
		XDSAddr: *xdsAddr, HTTPAddr: *httpAddr, DebugAddr: *debugAddr, DrainTimeout: *drain,
		MaxConnectionAge: *connAge, MaxConnectionAgeGrace: *connAgeGrace, Logger: log, Registry: reg, Limits: limits,
		Translate:    translate.Options{ClusterDomain: *clusterDomain, TrustDomain: *trustDomain, DefaultMTLS: mode, DefaultDeny: defaultDeny, DefaultAccessLog: accessLog},
		Certificates: controlplane.AuthorityCertificates(authority),
		OnSnapshot:   func(s *mesh.Snapshot) { publish(discovery.RootNamespaces(s)) },
		TestHooks:    *testHooks,
	}
	opts.PrometheusURL = *promURL
	if !sec.Insecure {
		names := slices.Clone(sec.ServerNames)
		for _, ip := range sec.ServerIPs {
			names = append(names, ip.String())
		}
		opts.Authenticate = controlplane.Authenticator(&discovery.TokenReviewer{Client: client, Audience: sec.TokenAudience})
		opts.ServerOptions = []grpc.ServerOption{controlplane.ServerTLS(func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return authority.ServerCertificate(names)
		})}
	}
	explicitDebug := false
	fs.Visit(func(f *flag.Flag) { explicitDebug = explicitDebug || f.Name == "debug-addr" })
	opts.DebugAddr = debugListenAddr(opts.DebugAddr, explicitDebug, log)
	cp := controlplane.New(disc, opts)
	if err := cp.Listen(); err != nil {
		return err
	}
	go func() {
		if err := roots.Run(ctx); err != nil && ctx.Err() == nil {
			log.Error("CA root publisher stopped", "err", err)
		}
	}()
	log.Info("bearkong starting", "version", version, "xds", cp.XDSAddr(), "http", cp.HTTPAddr(), "debug", cp.DebugAddr(),
		"trust_domain", *trustDomain, "ca_secret", *caSecret, "cert_lifetime", *certLifetime, "default_authz", *defaultAuthz)
	if election != nil {
		log.Info("leader election on: this replica writes to the API only while it holds the Lease",
			"lease", election.Namespace+"/"+election.Name, "identity", election.Identity)
	} else {
		log.Warn("--leader-elect=false: this replica writes to the API unconditionally; run one replica only")
	}
	if sec.Insecure {
		log.Warn("--xds-insecure is set: xDS is plaintext and any client that claims a node gets its config and certificate; for development only")
	}
	if *testHooks {
		log.Warn("--"+unsafeTestHooksFlag+" is set: the debug listener can pause any proxy's config or make it NACK; for tests only", "debug", cp.DebugAddr())
	}
	if *skipValidation {
		log.Warn("--" + unsafeSkipValidationFlag + " is set: HTTPRoutes annotated " + discovery.SkipValidationAnnotation + "=true skip bearkong's regex checks; for tests only")
	}
	err = cp.Serve(ctx)
	// Serve returns once xDS is drained; discovery may still be releasing the Lease.
	// Wait for it (bounded by the renew deadline, which bounds the release), so that
	// another replica takes over at once instead of after the lease duration.
	select {
	case <-disc.Stopped():
	case <-time.After(*leRenew):
		log.Warn("discovery did not stop in time; the Lease may stay held until it expires")
	}
	return err
}

// defaultIdentity is --leader-election-identity's default: $POD_NAME (the downward
// API), else the hostname, with a random suffix so that two processes on one host (or
// a pod restarted in place) never share an identity: two holders of one identity would
// both believe they lead.
func defaultIdentity() (string, error) {
	base := os.Getenv("POD_NAME")
	if base == "" {
		h, err := os.Hostname()
		if err != nil {
			return "", fmt.Errorf("--leader-election-identity: no $POD_NAME and no hostname: %w", err)
		}
		base = h
	}
	var b [4]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("--leader-election-identity: %w", err)
	}
	return base + "_" + hex.EncodeToString(b[:]), nil
}

// parseLimits checks the --xds-max-* flags and --xds-send-timeout: each must be positive
// (a limit of zero would refuse every proxy; there is no "unlimited").
func parseLimits(ints map[string]int, sendTimeout time.Duration, connStreams uint) (ads.Limits, error) {
	for _, name := range slices.Sorted(maps.Keys(ints)) {
		if ints[name] <= 0 {
			return ads.Limits{}, fmt.Errorf("--%s %d: must be positive", name, ints[name])
		}
	}
	if sendTimeout <= 0 {
		return ads.Limits{}, fmt.Errorf("--xds-send-timeout %s: must be positive", sendTimeout)
	}
	if connStreams == 0 || connStreams > math.MaxUint32 {
		return ads.Limits{}, fmt.Errorf("--xds-max-concurrent-streams-per-connection %d: must be between 1 and %d", connStreams, uint32(math.MaxUint32))
	}
	return ads.Limits{
		MaxNodeIDBytes:                    ints["xds-max-node-id-bytes"],
		MaxNodeMetadataBytes:              ints["xds-max-node-metadata-bytes"],
		MaxResourceNames:                  ints["xds-max-resource-names"],
		MaxStreamsPerNode:                 ints["xds-max-streams-per-node"],
		MaxStreams:                        ints["xds-max-streams"],
		MaxNackDetailBytes:                ints["xds-max-nack-detail-bytes"],
		SendTimeout:                       sendTimeout,
		MaxConcurrentStreamsPerConnection: uint32(connStreams),
	}, nil
}

// unsafeSkipValidationFlag names the hidden testing flag of bearkong cp.
const unsafeSkipValidationFlag = "unsafe-testing-skip-validation"

// unsafeTestHooksFlag names the hidden flag that turns the test hooks on.
const unsafeTestHooksFlag = "unsafe-testing-hooks"

// usageWithout prints fs's usage without the flags named hidden.
func usageWithout(fs *flag.FlagSet, hidden ...string) {
	fmt.Fprintf(fs.Output(), "Usage of %s:\n", fs.Name())
	all := flag.NewFlagSet(fs.Name(), flag.ContinueOnError)
	all.SetOutput(fs.Output())
	fs.VisitAll(func(f *flag.Flag) {
		if !slices.Contains(hidden, f.Name) {
			all.Var(f.Value, f.Name, f.Usage)
		}
	})
	all.PrintDefaults()
}

func newLogger(w io.Writer, level, format string) (*slog.Logger, error) {
	var l slog.Level
	if err := l.UnmarshalText([]byte(level)); err != nil {
		return nil, fmt.Errorf("--log-level: %w", err)
	}
	opts := &slog.HandlerOptions{Level: l}
	switch format {
	case "text":
		return slog.New(slog.NewTextHandler(w, opts)), nil
	case "json":
		return slog.New(slog.NewJSONHandler(w, opts)), nil
	}
	return nil, fmt.Errorf("--log-format must be text or json, got %q", format)
}

// defaultDebugAddr is the default of --debug-addr: loopback, so that only kubectl
// port-forward (or a process on the node, outside a pod) reaches the profiles.
const defaultDebugAddr = "127.0.0.1:6060"

// debugListenAddr is the pprof address to listen on. An address the user gave is
// kept, and failing to bind it stops the control plane like any listener. The default is
// dropped, with a warning, when it cannot be bound now: profiles are a debugging aid, and
// several control planes on one host (replicas in development) must not fail on it.
func debugListenAddr(addr string, explicit bool, log *slog.Logger) string {
	if addr == "" || explicit {
		return addr
	}
	l, err := net.Listen("tcp", addr)
	if err != nil {
		log.Warn("the default --debug-addr is taken; serving no profiles (set --debug-addr to choose another address)", "addr", addr, "err", err)
		return ""
	}
	l.Close()
	return addr
}

// bridgeKlog sends klog's lines through log. client-go logs through klog (reflectors,
// leader election, request retries); without this they would ignore --log-format and
// --log-level. klog's own verbosity stays 0, so client-go's V(2) and above stay off as
// before. Its lines carry logger=klog, so that they can be told from bearkong's own.
// https://pkg.go.dev/k8s.io/klog/v2#SetSlogLogger
func bridgeKlog(log *slog.Logger) { klog.SetSlogLogger(log.With("logger", "klog")) }

// parseKubeClient checks --kube-api-qps and --kube-api-burst: each must be positive
// (client-go takes a zero as "use my defaults" and a negative QPS as "no limit").
func parseKubeClient(kubeconfig string, qps float64, burst int) (discovery.ClientOptions, error) {
	if qps <= 0 || qps > math.MaxFloat32 {
		return discovery.ClientOptions{}, fmt.Errorf("--kube-api-qps %v: must be positive", qps)
	}
	if burst <= 0 {
		return discovery.ClientOptions{}, fmt.Errorf("--kube-api-burst %d: must be positive", burst)
	}
	return discovery.ClientOptions{Kubeconfig: kubeconfig, QPS: float32(qps), Burst: burst}, nil
}

func runBootstrap(args []string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("bearkong bootstrap", flag.ContinueOnError)
	fs.SetOutput(stderr)
	var o translate.BootstrapOptions
	fs.StringVar(&o.PodName, "pod-name", os.Getenv("POD_NAME"), "the pod's name (default $POD_NAME, from the downward API)")
	fs.StringVar(&o.PodNamespace, "pod-namespace", os.Getenv("POD_NAMESPACE"), "the pod's namespace (default $POD_NAMESPACE, from the downward API)")
	fs.StringVar(&o.Workload, "workload", os.Getenv("WORKLOAD"), "the pod's workload, named by the mesh_workload label of every sidecar stat (default $WORKLOAD, else the pod's name; in a cluster, the pod's app label from the downward API)")
	fs.StringVar(&o.ListenIP, "listen-ip", envOr("LISTEN_IP", translate.DefaultListenIP), "address the inbound listener (8000) binds")
	fs.StringVar(&o.OutboundIP, "outbound-ip", envOr("OUTBOUND_IP", translate.DefaultOutboundIP), "address the outbound listener (8001) binds: loopback, so that only the pod's own processes reach it")
	fs.StringVar(&o.AppAddress, "app-address", envOr("APP_ADDRESS", "127.0.0.1:9090"), "host:port of the application in the pod")
	fs.StringVar(&o.AdminAddress, "admin-address", envOr("ADMIN_ADDRESS", "127.0.0.1:8081"), "host:port of Envoy's admin listener")
	fs.StringVar(&o.XDSAddress, "xds-address", envOr("BEARKONG_XDS_ADDRESS", "bearkong.bearkong-system.svc:5000"), "host:port of the control plane's xDS server, or several, comma-separated: the replicas, which in the secure mode must then be IPs, balanced round robin; $BEARKONG_XDS_ADDRESS sets the default")
	caFile := fs.String("xds-ca-file", os.Getenv("BEARKONG_XDS_CA_FILE"), "PEM file of the roots of the control plane's certificate, inlined into the bootstrap (default $BEARKONG_XDS_CA_FILE)")
	fs.StringVar(&o.XDSTokenFile, "xds-token-file", os.Getenv("BEARKONG_XDS_TOKEN_FILE"), "absolute path of the pod's projected ServiceAccount token, which Envoy reads at each connection (default $BEARKONG_XDS_TOKEN_FILE)")
	fs.StringVar(&o.XDSServerName, "xds-server-name", os.Getenv("BEARKONG_XDS_SERVER_NAME"), "name the control plane's certificate must hold (default $BEARKONG_XDS_SERVER_NAME, else the host of --xds-address)")
	insecure, err := envBool("BEARKONG_XDS_INSECURE")
	if err != nil {
		return err
	}
	fs.StringVar(&o.XDSProtocol, "xds-protocol", envOr("BEARKONG_XDS_PROTOCOL", translate.DefaultXDSProtocol), "xDS protocol of the ADS stream: "+strings.Join(translate.XDSProtocols, " or ")+" (state of the world, or incremental); $BEARKONG_XDS_PROTOCOL sets the default")
	fs.BoolVar(&o.XDSInsecure, "xds-insecure", insecure, "plaintext xDS without credentials, for development only; the control plane must run with --xds-insecure too (default $BEARKONG_XDS_INSECURE)")
	out := fs.String("o", "-", "write the bootstrap to this file instead of stdout")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("bootstrap takes no arguments, got %q", fs.Args())
	}
	if *caFile != "" {
		if o.XDSInsecure {
			return errors.New("--xds-ca-file and --xds-insecure contradict each other")
		}
		if o.XDSRootCA, err = os.ReadFile(*caFile); err != nil {
			return fmt.Errorf("--xds-ca-file: %w", err)
		}
	}
	b, err := translate.Bootstrap(o)
	if err != nil {
		if !o.XDSInsecure && (len(o.XDSRootCA) == 0 || o.XDSTokenFile == "") {
			return fmt.Errorf("%w\n(the secure xDS channel needs --xds-ca-file and --xds-token-file; --xds-insecure is for development)", err)
		}
		return err
	}
	raw, err := protojson.Marshal(b)
	if err != nil {
		return fmt.Errorf("encode bootstrap: %w", err)
	}
	// protojson's spacing is deliberately unstable; re-indent for a stable, readable file.
	var buf bytes.Buffer
	if err := json.Indent(&buf, raw, "", "  "); err != nil {
		return fmt.Errorf("encode bootstrap: %w", err)
	}
	buf.WriteByte('\n')
	js := buf.Bytes()
	if *out == "-" {
		_, err = stdout.Write(js)
		return err
	}
	if !strings.HasSuffix(*out, ".json") && !strings.HasSuffix(*out, ".yaml") {
		return fmt.Errorf("-o %s: Envoy picks the format from the extension; use .json or .yaml", *out)
	}
	if err := os.WriteFile(*out, js, 0o644); err != nil {
		return fmt.Errorf("write bootstrap: %w", err)
	}
	return nil
}

// envBool reads a boolean environment variable; unset or empty is false.
func envBool(key string) (bool, error) {
	v := os.Getenv(key)
	if v == "" {
		return false, nil
	}
	b, err := strconv.ParseBool(v)
	if err != nil {
		return false, fmt.Errorf("$%s: %q is not a boolean", key, v)
	}
	return b, nil
}

func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}

// parseDefaultAuthz reads --default-authz: true means deny by default.
func parseDefaultAuthz(s string) (bool, error) {
	switch s {
	case "allow":
		return false, nil
	case "deny":
		return true, nil
	}
	return false, fmt.Errorf("--default-authz %q: want allow or deny", s)
}
