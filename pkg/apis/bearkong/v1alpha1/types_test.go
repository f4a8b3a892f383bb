package v1alpha1

import (
	"encoding/json"
	"reflect"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"
)

// example is the policy of the design, every field used.
const example = `
apiVersion: bearkong.dev/v1alpha1
kind: AuthorizationPolicy
metadata: {name: app-3-callers, namespace: default, generation: 2}
spec:
  targetRef: {name: app-3}
  action: ALLOW
  mode: Enforce
  rules:
    - from:
        - serviceAccount: {name: app-1, namespace: default}
        - service: {name: app-1, namespace: default}
        - anyWorkload: true
      to:
        methods: [GET, POST]
        paths: [{type: PathPrefix, value: /admin}]
        headers: [{name: x-user, value: alice}]
        grpc: [{service: currency.Currency, method: Convert}]
    - {}
status:
  conditions:
    - {type: Accepted, status: "True", reason: Accepted, message: ok, observedGeneration: 2, lastTransitionTime: "2026-01-02T03:04:05Z"}
`

func TestExampleRoundTrip(t *testing.T) {
	var p AuthorizationPolicy
	if err := yaml.UnmarshalStrict([]byte(example), &p); err != nil {
		t.Fatal(err)
	}
	want := AuthorizationPolicySpec{
		TargetRef: TargetRef{Name: "app-3"},
		Action:    ActionAllow,
		Mode:      ModeEnforce,
		Rules: []Rule{{
			From: []Source{
				{ServiceAccount: &ObjectRef{Name: "app-1", Namespace: "default"}},
				{Service: &ObjectRef{Name: "app-1", Namespace: "default"}},
				{AnyWorkload: true},
			},
			To: &Operation{
				Methods: []string{"GET", "POST"},
				Paths:   []PathMatch{{Type: PathMatchPathPrefix, Value: "/admin"}},
				Headers: []HeaderMatch{{Name: "x-user", Value: "alice"}},
				GRPC:    []GRPCMethod{{Service: "currency.Currency", Method: "Convert"}},
			},
		}, {}},
	}
	if !reflect.DeepEqual(p.Spec, want) {
		t.Errorf("spec = %+v\nwant %+v", p.Spec, want)
	}
	if p.Kind != "AuthorizationPolicy" || p.APIVersion != SchemeGroupVersion.String() || p.Namespace != "default" || p.Generation != 2 {
		t.Errorf("meta = %+v %+v", p.TypeMeta, p.ObjectMeta)
	}
	if len(p.Status.Conditions) != 1 || p.Status.Conditions[0].Status != metav1.ConditionTrue || p.Status.Conditions[0].ObservedGeneration != 2 {
		t.Errorf("status = %+v", p.Status)
	}

	// JSON out and back in gives the same object; and the same JSON as the YAML says.
	b, err := json.Marshal(&p)
	if err != nil {
		t.Fatal(err)
	}
	var back AuthorizationPolicy
	if err := json.Unmarshal(b, &back); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(back, p) {
		t.Errorf("round trip changed the policy:\n%+v\n%+v", back, p)
	}
	var fromYAML, fromGo map[string]any
	j, err := yaml.YAMLToJSON([]byte(example))
	if err != nil {
		t.Fatal(err)
	}
	_ = json.Unmarshal(j, &fromYAML)
	_ = json.Unmarshal(b, &fromGo)
	delete(fromGo["metadata"].(map[string]any), "creationTimestamp") // ObjectMeta writes null
	if !reflect.DeepEqual(fromYAML, fromGo) {
		t.Errorf("JSON differs from the YAML:\n%s\n%s", j, b)
	}
}

func TestDeepCopyIsIndependent(t *testing.T) {
	var p AuthorizationPolicy
	if err := yaml.UnmarshalStrict([]byte(example), &p); err != nil {
		t.Fatal(err)
	}
	p.Labels = map[string]string{"a": "b"}
	c := p.DeepCopy()
	if !reflect.DeepEqual(*c, p) {
		t.Fatalf("copy differs")
	}
	orig := p.DeepCopy()
	// Change every pointer and slice of the copy: the original must not see it.
	c.Labels["a"] = "x"
	c.Spec.Rules[0].From[0].ServiceAccount.Name = "x"
	c.Spec.Rules[0].From[1].Service.Namespace = "x"
	c.Spec.Rules[0].From[2].AnyWorkload = false
	c.Spec.Rules[0].To.Methods[0] = "PUT"
	c.Spec.Rules[0].To.Paths[0].Value = "/x"
	c.Spec.Rules[0].To.Headers[0].Value = "x"
	c.Spec.Rules[0].To.GRPC[0].Method = "x"
	c.Spec.Rules = append(c.Spec.Rules[:1], Rule{})
	c.Status.Conditions[0].Reason = "x"
	if !reflect.DeepEqual(p, *orig) {
		t.Errorf("changing the copy changed the original:\n%+v", p)
	}

	l := &AuthorizationPolicyList{Items: []AuthorizationPolicy{p}}
	lc := l.DeepCopyObject().(*AuthorizationPolicyList)
	lc.Items[0].Spec.Rules[0].To.Methods[0] = "PUT"
	if l.Items[0].Spec.Rules[0].To.Methods[0] != "GET" {
		t.Error("list copy shares memory")
	}
	var nilp *AuthorizationPolicy
	if nilp.DeepCopy() != nil {
		t.Error("nil copy not nil")
	}
}
