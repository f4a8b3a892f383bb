package discovery

import (
	"reflect"
	"testing"

	"github.com/bearkong/bearkong/pkg/mesh"
)

// setNonZero makes v, a settable zero value, differ from the zero value of its type.
func setNonZero(v reflect.Value) {
	switch v.Kind() {
	case reflect.String:
		v.SetString("x")
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		v.SetInt(1)
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		v.SetUint(1)
	case reflect.Float32, reflect.Float64:
		v.SetFloat(1)
	case reflect.Slice:
		v.Set(reflect.MakeSlice(v.Type(), 1, 1))
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		setNonZero(k)
		m.SetMapIndex(k, e)
		v.Set(m)
	case reflect.Pointer:
		v.Set(reflect.New(v.Type().Elem()))
	case reflect.Struct:
		for i := range v.NumField() {
			if v.Field(i).CanSet() {
				setNonZero(v.Field(i))
				return
			}
		}
	}
}

// TestSameComparesEveryField: a full build shares the last build's Service and Proxy
// objects where sameService and sameProxy find them equal (sharePart, shareProxies), so a
// field they do not compare would leave a changed Service's config as it was. Each field,
// set on one side only, must make them differ; a field added to mesh.Service or
// mesh.Proxy fails here until it is compared.
func TestSameComparesEveryField(t *testing.T) {
	svc := reflect.TypeFor[mesh.Service]()
	for i := range svc.NumField() {
		a, b := &mesh.Service{}, &mesh.Service{}
		setNonZero(reflect.ValueOf(b).Elem().Field(i))
		if sameService(a, b) || sameService(b, a) {
			t.Errorf("sameService does not compare mesh.Service.%s", svc.Field(i).Name)
		}
	}
	px := reflect.TypeFor[mesh.Proxy]()
	for i := range px.NumField() {
		a, b := &mesh.Proxy{}, &mesh.Proxy{}
		setNonZero(reflect.ValueOf(b).Elem().Field(i))
		if sameProxy(a, b) || sameProxy(b, a) {
			t.Errorf("sameProxy does not compare mesh.Proxy.%s", px.Field(i).Name)
		}
	}
}
