package kubeenv

import (
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"path"
	"time"

	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/uuid"
)

// StoreEndpointSlice writes slice straight into etcd, where the API server keeps it, and
// where its watch cache picks it up at once: informers see an ordinary add or update.
//
// Why not through the API: EndpointSlice validation rejects loopback addresses
// (ValidateEndpointIP: "may not be in the loopback range"), and the local mesh's pods live
// on 127.0.1.N. Writing below the API keeps every reader honest: the control plane reads
// real EndpointSlices with the addresses the sidecars really listen on.
//
// The caller owns the object: slice.UID and CreationTimestamp are filled in when empty and
// should be kept for later writes of the same slice; ResourceVersion is ignored (etcd's
// revision becomes the resource version).
func (e *Env) StoreEndpointSlice(ctx context.Context, slice *discoveryv1.EndpointSlice) error {
	if slice.Namespace == "" || slice.Name == "" {
		return fmt.Errorf("store EndpointSlice: namespace and name are required")
	}
	obj := slice.DeepCopy()
	obj.APIVersion = discoveryv1.SchemeGroupVersion.String()
	obj.Kind = "EndpointSlice"
	obj.ResourceVersion = ""
	if obj.UID == "" {
		obj.UID = uuid.NewUUID()
		slice.UID = obj.UID
	}
	if obj.CreationTimestamp.IsZero() {
		obj.CreationTimestamp = metav1.NewTime(time.Now())
		slice.CreationTimestamp = obj.CreationTimestamp
	}
	// JSON is one of the encodings the API server's storage decoder recognises, whatever
	// --storage-media-type says for its own writes.
	value, err := json.Marshal(obj)
	if err != nil {
		return fmt.Errorf("store EndpointSlice %s/%s: %w", slice.Namespace, slice.Name, err)
	}
	key := endpointSliceKey(slice.Namespace, slice.Name)
	if err := e.etcdCall(ctx, "/v3/kv/put", map[string]string{"key": b64(key), "value": b64(string(value))}); err != nil {
		return fmt.Errorf("store EndpointSlice %s/%s: %w", slice.Namespace, slice.Name, err)
	}
	return nil
}

// DeleteStoredEndpointSlice removes an EndpointSlice from etcd (see StoreEndpointSlice).
// Deleting a slice that does not exist is not an error.
func (e *Env) DeleteStoredEndpointSlice(ctx context.Context, namespace, name string) error {
	key := endpointSliceKey(namespace, name)
	if err := e.etcdCall(ctx, "/v3/kv/deleterange", map[string]string{"key": b64(key)}); err != nil {
		return fmt.Errorf("delete EndpointSlice %s/%s: %w", namespace, name, err)
	}
	return nil
}

// endpointSliceKey is the API server's etcd key for an EndpointSlice: the default
// --etcd-prefix, the resource, then namespace and name.
func endpointSliceKey(namespace, name string) string {
	return path.Join("/registry", "endpointslices", namespace, name)
}

// etcdCall posts a JSON request to etcd's gRPC gateway (the v3 API over HTTP).
func (e *Env) etcdCall(ctx context.Context, method string, req any) error {
	body, err := json.Marshal(req)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	hreq, err := http.NewRequestWithContext(ctx, http.MethodPost, e.EtcdURL+method, bytes.NewReader(body))
	if err != nil {
		return err
	}
	hreq.Header.Set("Content-Type", "application/json")
	resp, err := http.DefaultClient.Do(hreq)
	if err != nil {
		return fmt.Errorf("etcd %s: %w", method, err)
	}
	defer resp.Body.Close()
	out, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("etcd %s: %s: %s", method, resp.Status, out)
	}
	return nil
}

func b64(s string) string { return base64.StdEncoding.EncodeToString([]byte(s)) }
