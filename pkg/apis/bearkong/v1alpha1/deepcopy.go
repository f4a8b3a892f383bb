package v1alpha1

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
)

// Deep copies, written by hand rather than by deepcopy-gen: informers hand out shared
// pointers from their cache, so anything that changes a policy (a status write) works on
// a copy that shares no slice or pointer with the cached object.

// DeepCopyInto copies p into out.
func (p *AuthorizationPolicy) DeepCopyInto(out *AuthorizationPolicy) {
	*out = *p
	out.TypeMeta = p.TypeMeta
	p.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	p.Spec.DeepCopyInto(&out.Spec)
	p.Status.DeepCopyInto(&out.Status)
}

// DeepCopy returns a copy of p that shares no memory with it.
func (p *AuthorizationPolicy) DeepCopy() *AuthorizationPolicy {
	if p == nil {
		return nil
	}
	out := new(AuthorizationPolicy)
	p.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (p *AuthorizationPolicy) DeepCopyObject() runtime.Object {
	if c := p.DeepCopy(); c != nil {
		return c
	}
	return nil
}

// DeepCopyInto copies s into out.
func (s *AuthorizationPolicySpec) DeepCopyInto(out *AuthorizationPolicySpec) {
	*out = *s
	if s.Rules != nil {
		out.Rules = make([]Rule, len(s.Rules))
		for i := range s.Rules {
			s.Rules[i].DeepCopyInto(&out.Rules[i])
		}
	}
}

// DeepCopyInto copies r into out.
func (r *Rule) DeepCopyInto(out *Rule) {
	*out = *r
	if r.From != nil {
		out.From = make([]Source, len(r.From))
		for i := range r.From {
			r.From[i].DeepCopyInto(&out.From[i])
		}
	}
	if r.To != nil {
		out.To = new(Operation)
		r.To.DeepCopyInto(out.To)
	}
}

// DeepCopyInto copies s into out.
func (s *Source) DeepCopyInto(out *Source) {
	*out = *s
	if s.ServiceAccount != nil {
		v := *s.ServiceAccount
		out.ServiceAccount = &v
	}
	if s.Service != nil {
		v := *s.Service
		out.Service = &v
	}
}

// DeepCopyInto copies o into out. Every element type is a plain value.
func (o *Operation) DeepCopyInto(out *Operation) {
	*out = *o
	out.Methods = cloneSlice(o.Methods)
	out.Paths = cloneSlice(o.Paths)
	out.Headers = cloneSlice(o.Headers)
	out.GRPC = cloneSlice(o.GRPC)
}

// DeepCopyInto copies s into out.
func (s *AuthorizationPolicyStatus) DeepCopyInto(out *AuthorizationPolicyStatus) {
	*out = *s
	if s.Conditions != nil {
		out.Conditions = make([]metav1.Condition, len(s.Conditions))
		for i := range s.Conditions {
			s.Conditions[i].DeepCopyInto(&out.Conditions[i])
		}
	}
}

// DeepCopyInto copies l into out.
func (l *AuthorizationPolicyList) DeepCopyInto(out *AuthorizationPolicyList) {
	*out = *l
	out.TypeMeta = l.TypeMeta
	l.ListMeta.DeepCopyInto(&out.ListMeta)
	if l.Items != nil {
		out.Items = make([]AuthorizationPolicy, len(l.Items))
		for i := range l.Items {
			l.Items[i].DeepCopyInto(&out.Items[i])
		}
	}
}

// DeepCopy returns a copy of l that shares no memory with it.
func (l *AuthorizationPolicyList) DeepCopy() *AuthorizationPolicyList {
	if l == nil {
		return nil
	}
	out := new(AuthorizationPolicyList)
	l.DeepCopyInto(out)
	return out
}

// DeepCopyObject implements runtime.Object.
func (l *AuthorizationPolicyList) DeepCopyObject() runtime.Object {
	if c := l.DeepCopy(); c != nil {
		return c
	}
	return nil
}

// cloneSlice copies a slice of plain values: nil stays nil and empty stays empty, so a
// copy compares (reflect.DeepEqual) and marshals as its original does.
func cloneSlice[T any](s []T) []T {
	if s == nil {
		return nil
	}
	return append(make([]T, 0, len(s)), s...)
}
