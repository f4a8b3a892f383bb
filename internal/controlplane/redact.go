package controlplane

import (
	"github.com/cncf/xds/go/udpa/annotations"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/types/known/anypb"
)

// Redacted is what Redact puts in place of a sensitive string or bytes field: the value
// Envoy's admin /config_dump shows, so that a config bearkong redacted and one Envoy
// dumped compare equal.
const Redacted = "[redacted]"

// Redact clears, in place, what a config must never show: the fields the Envoy API marks
// (udpa.annotations.sensitive), such as a TlsCertificate's private_key, and everything
// under them. Strings and bytes become Redacted, other values are cleared, as Envoy's
// admin does for /config_dump
// (https://www.envoyproxy.io/docs/envoy/latest/operations/admin#get--config_dump: "sensitive
// fields are redacted"). It looks inside Anys whose type is linked in, where a
// transport socket or a filter keeps its config; an Any of an unknown type is dropped
// whole, since what it holds cannot be checked.
func Redact(m proto.Message) {
	redact(m.ProtoReflect(), false)
}

func redact(m protoreflect.Message, sensitive bool) {
	if a, ok := m.Interface().(*anypb.Any); ok {
		redactAny(a, sensitive)
		return
	}
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		s := sensitive || proto.GetExtension(fd.Options(), annotations.E_Sensitive).(bool)
		switch {
		case fd.IsMap():
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				switch {
				case fd.MapValue().Message() != nil:
					redact(mv.Message(), s)
				case s:
					v.Map().Set(k, redactedScalar(fd.MapValue(), mv))
				}
				return true
			})
		case fd.IsList():
			l := v.List()
			for i := range l.Len() {
				switch {
				case fd.Message() != nil:
					redact(l.Get(i).Message(), s)
				case s:
					l.Set(i, redactedScalar(fd, l.Get(i)))
				}
			}
		case fd.Message() != nil:
			redact(v.Message(), s)
		case s:
			if r := redactedScalar(fd, v); r.IsValid() {
				m.Set(fd, r)
			} else {
				m.Clear(fd)
			}
		}
		return true
	})
}

// redactedScalar is what a sensitive scalar becomes: Redacted for strings and bytes, the
// invalid Value (clear the field) for the rest.
func redactedScalar(fd protoreflect.FieldDescriptor, v protoreflect.Value) protoreflect.Value {
	switch fd.Kind() {
	case protoreflect.StringKind:
		return protoreflect.ValueOfString(Redacted)
	case protoreflect.BytesKind:
		return protoreflect.ValueOfBytes([]byte(Redacted))
	}
	return protoreflect.Value{}
}

func redactAny(a *anypb.Any, sensitive bool) {
	if len(a.GetValue()) == 0 {
		return
	}
	inner, err := a.UnmarshalNew()
	if err != nil {
		a.Value = nil
		return
	}
	redact(inner.ProtoReflect(), sensitive)
	b, err := proto.MarshalOptions{Deterministic: true}.Marshal(inner)
	if err != nil {
		a.Value = nil
		return
	}
	a.Value = b
}
