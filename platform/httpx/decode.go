package httpx

import (
	"encoding/json"
	"errors"
	"io"
	"mime"
	"net/http"
	"reflect"
	"strings"

	"github.com/atriumhq/atrium/platform/errs"
)

// Decode reads a JSON request body into dst strictly: unknown fields, wrong
// types, trailing data, a missing required field (a struct field tagged
// `required:"true"` left at its zero value) and an oversized body are each
// reported as an error naming the field. dst must be a pointer to a struct.
func Decode(r *http.Request, dst any) error {
	if ct := r.Header.Get("Content-Type"); ct != "" {
		mt, _, err := mime.ParseMediaType(ct)
		if err != nil || (mt != "application/json" && !strings.HasSuffix(mt, "+json")) {
			return errs.E(errs.Invalid, "Content-Type must be application/json")
		}
	}
	dec := json.NewDecoder(r.Body)
	dec.DisallowUnknownFields()
	if err := dec.Decode(dst); err != nil {
		return decodeError(err)
	}
	if err := dec.Decode(&struct{}{}); !errors.Is(err, io.EOF) {
		if errors.As(err, new(*http.MaxBytesError)) {
			return decodeError(err) // a small object padded past the limit
		}
		return errs.E(errs.Invalid, "body must hold a single JSON object")
	}
	return checkRequired(reflect.ValueOf(dst), "")
}

func decodeError(err error) error {
	var (
		syn  *json.SyntaxError
		typ  *json.UnmarshalTypeError
		tooL *http.MaxBytesError
	)
	switch {
	case errors.As(err, &tooL):
		return errs.E(errs.TooLarge, "body exceeds %d bytes", tooL.Limit)
	case errors.Is(err, io.EOF):
		return errs.E(errs.Invalid, "body is empty; a JSON object is expected")
	case errors.Is(err, io.ErrUnexpectedEOF):
		return errs.E(errs.Invalid, "body is truncated JSON")
	case errors.As(err, &syn):
		return errs.E(errs.Invalid, "malformed JSON at byte %d", syn.Offset)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			return errs.E(errs.Invalid, "body must be a JSON object")
		}
		return errs.Field(field, "must be %s, not %s", JSONKind(typ.Type), typ.Value)
	case strings.HasPrefix(err.Error(), "json: unknown field "):
		name := strings.Trim(strings.TrimPrefix(err.Error(), "json: unknown field "), `"`)
		return errs.Field(name, "unknown field")
	default:
		return errs.E(errs.Invalid, "body is not valid JSON")
	}
}

// JSONKind names the JSON type a Go type decodes from ("a string", "an
// integer" ...), for error messages that do not show Go type names.
func JSONKind(t reflect.Type) string {
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Bool:
		return "a boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.Slice, reflect.Array:
		return "an array"
	case reflect.Map, reflect.Struct:
		return "an object"
	case reflect.Pointer:
		return JSONKind(t.Elem())
	default:
		return "a " + t.String()
	}
}

// checkRequired walks v and reports the first field tagged
// `required:"true"` that holds its zero value.
func checkRequired(v reflect.Value, path string) error {
	for v.Kind() == reflect.Pointer {
		if v.IsNil() {
			return nil
		}
		v = v.Elem()
	}
	if v.Kind() != reflect.Struct {
		return nil
	}
	t := v.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name := strings.Split(f.Tag.Get("json"), ",")[0]
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		full := name
		if path != "" {
			full = path + "." + name
		}
		fv := v.Field(i)
		if f.Tag.Get("required") == "true" && fv.IsZero() {
			return errs.Field(full, "is required")
		}
		if err := checkRequired(fv, full); err != nil {
			return err
		}
	}
	return nil
}
