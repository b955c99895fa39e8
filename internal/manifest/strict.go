package manifest

import (
	"encoding"
	"encoding/json"
	"reflect"
	"sort"
	"strconv"
	"strings"
)

var (
	jsonUnmarshalerType = reflect.TypeFor[json.Unmarshaler]()
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
)

// fieldProblem is an unknown field or a value of the wrong JSON type.
type fieldProblem struct {
	path   string
	reason string
}

// checkFields walks a generic JSON value (as produced by json.Unmarshal
// into any) against the Go type it will be decoded into and returns, sorted
// by path, every object key the type has no field for and every value of
// the wrong JSON type, with full paths (indices included). Types with their
// own UnmarshalJSON/UnmarshalText are leaves (they check their own input);
// map values and slice elements are walked.
func checkFields(t reflect.Type, v any, path string) []fieldProblem {
	var out []fieldProblem
	walkUnknown(t, v, path, &out)
	sort.SliceStable(out, func(i, j int) bool { return out[i].path < out[j].path })
	return out
}

func mismatch(out *[]fieldProblem, path string, want string, v any) {
	*out = append(*out, fieldProblem{path, "cannot use " + describeJSON(v) + " as " + want})
}

func describeJSON(v any) string {
	switch x := v.(type) {
	case string:
		if len(x) > 40 {
			x = x[:40] + "..."
		}
		return strconv.Quote(x) + " (string)"
	case float64:
		return strconv.FormatFloat(x, 'g', -1, 64) + " (number)"
	case bool:
		return strconv.FormatBool(x) + " (boolean)"
	case []any:
		return "a list"
	case map[string]any:
		return "an object"
	}
	return "null"
}

func walkUnknown(t reflect.Type, v any, path string, out *[]fieldProblem) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if v == nil {
		return
	}
	if reflect.PointerTo(t).Implements(jsonUnmarshalerType) || reflect.PointerTo(t).Implements(textUnmarshalerType) {
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		obj, ok := v.(map[string]any)
		if !ok {
			mismatch(out, path, "an object", v)
			return
		}
		fields := jsonFields(t)
		keys := make([]string, 0, len(obj))
		for k := range obj {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			ft, ok := fields[k]
			if !ok {
				// encoding/json matches keys case-insensitively; a field
				// that only matches by case is an error here, since the
				// API server is case-sensitive.
				*out = append(*out, fieldProblem{joinPath(path, k), "unknown field"})
				continue
			}
			walkUnknown(ft, obj[k], joinPath(path, k), out)
		}
	case reflect.Slice, reflect.Array:
		arr, ok := v.([]any)
		if !ok {
			if t.Elem().Kind() == reflect.Uint8 {
				return // []byte is a base64 string
			}
			mismatch(out, path, "a list", v)
			return
		}
		for i, e := range arr {
			walkUnknown(t.Elem(), e, path+"["+strconv.Itoa(i)+"]", out)
		}
	case reflect.String:
		if _, ok := v.(string); !ok {
			mismatch(out, path, "a string", v)
		}
	case reflect.Bool:
		if _, ok := v.(bool); !ok {
			mismatch(out, path, "a boolean", v)
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		f, ok := v.(float64)
		if !ok {
			mismatch(out, path, "an integer", v)
		} else if f != float64(int64(f)) {
			mismatch(out, path, "an integer", v)
		}
	case reflect.Float32, reflect.Float64:
		if _, ok := v.(float64); !ok {
			mismatch(out, path, "a number", v)
		}
	case reflect.Map:
		obj, ok := v.(map[string]any)
		if !ok {
			mismatch(out, path, "an object", v)
			return
		}
		for k, e := range obj {
			walkUnknown(t.Elem(), e, path+"["+k+"]", out)
		}
	}
}

func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// jsonFields maps the JSON names of t's fields (following embedded structs
// without a JSON name, as encoding/json does) to their types.
func jsonFields(t reflect.Type) map[string]reflect.Type {
	fields := map[string]reflect.Type{}
	var add func(t reflect.Type)
	add = func(t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			tag := f.Tag.Get("json")
			if tag == "-" {
				continue
			}
			name, _, _ := strings.Cut(tag, ",")
			if f.Anonymous && name == "" {
				ft := f.Type
				for ft.Kind() == reflect.Pointer {
					ft = ft.Elem()
				}
				if ft.Kind() == reflect.Struct {
					add(ft)
					continue
				}
			}
			if !f.IsExported() {
				continue
			}
			if name == "" {
				name = f.Name
			}
			if _, dup := fields[name]; !dup {
				fields[name] = f.Type
			}
		}
	}
	add(t)
	return fields
}
