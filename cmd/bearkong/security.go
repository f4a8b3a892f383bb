package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"strings"

	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/bearkong/bearkong/pkg/discovery"
)

// cpSecurity is how `bearkong cp` secures its xDS channel, from its flags: the CA's
// server certificate for ServerNames/ServerIPs, and controlplane.Authenticator for the
// tokens.
type cpSecurity struct {
	// Insecure serves plaintext xDS and believes any node: development only.
	Insecure bool
	// TokenAudience is the audience the proxies' ServiceAccount tokens must carry.
	TokenAudience string
	// ServerNames and ServerIPs go into the xDS server certificate (DNS and IP SANs).
	ServerNames []string
	ServerIPs   []net.IP
}

// defaultTokenAudience is the audience of the token the sidecars project for bearkong.
const defaultTokenAudience = "bearkong"

// parseCPSecurity validates the security flags of cp. names is --xds-server-names,
// comma-separated; empty means the Service's names in namespace (bearkong.<ns>.svc and
// bearkong.<ns>.svc.<clusterDomain>) plus the host of xdsAddr when it is a specific IP.
func parseCPSecurity(insecure bool, audience, names, xdsAddr, namespace, clusterDomain string) (cpSecurity, error) {
	s := cpSecurity{Insecure: insecure, TokenAudience: audience}
	if insecure {
		return s, nil
	}
	var errs []error
	if audience == "" {
		errs = append(errs, errors.New("--xds-token-audience must not be empty"))
	}
	var list []string
	if strings.TrimSpace(names) == "" {
		list = []string{"bearkong." + namespace + ".svc", "bearkong." + namespace + ".svc." + clusterDomain}
		if host, _, err := net.SplitHostPort(xdsAddr); err == nil {
			if a, err := netip.ParseAddr(host); err == nil && !a.IsUnspecified() {
				list = append(list, a.String())
			}
		}
	} else {
		list = strings.Split(names, ",")
	}
	seen := map[string]bool{}
	for _, n := range list {
		n = strings.TrimSpace(n)
		switch {
		case n == "":
			errs = append(errs, fmt.Errorf("--xds-server-names %q has an empty name", names))
			continue
		case seen[n]:
			continue
		}
		seen[n] = true
		if a, err := netip.ParseAddr(n); err == nil {
			if a.Zone() != "" || a.IsUnspecified() {
				errs = append(errs, fmt.Errorf("--xds-server-names: %q is not an address a client can dial", n))
				continue
			}
			s.ServerIPs = append(s.ServerIPs, net.IP(a.AsSlice()))
			continue
		}
		if msgs := validation.IsDNS1123Subdomain(n); len(msgs) > 0 {
			errs = append(errs, fmt.Errorf("--xds-server-names: %q is neither an IP address nor a DNS name: %s", n, strings.Join(msgs, "; ")))
			continue
		}
		s.ServerNames = append(s.ServerNames, n)
	}
	if err := errors.Join(errs...); err != nil {
		return cpSecurity{}, err
	}
	return s, nil
}

// publishRoots returns a function that hands the namespaces of each snapshot to the CA
// root publisher, off the caller's path: Publish makes API requests, and the control
// plane calls this from its translate loop. Only the newest namespaces wait; the
// publisher writes nothing when they did not change.
func publishRoots(ctx context.Context, p *discovery.RootPublisher, bundle []byte, log *slog.Logger) func([]string) {
	latest := make(chan []string, 1)
	go func() {
		for {
			select {
			case <-ctx.Done():
				return
			case ns := <-latest:
				if err := p.Publish(ctx, bundle, ns); err != nil && ctx.Err() == nil {
					log.Warn("publishing the CA root", "err", err)
				}
			}
		}
	}()
	return func(ns []string) {
		select {
		case <-latest: // drop the older, unpublished list
		default:
		}
		latest <- ns
	}
}
