package observer

import (
	"fmt"
	"net/url"
	"regexp"
	"slices"
	"strconv"
	"strings"

	flowpb "github.com/cilium/cilium/api/v1/flow"
)

// HTTP and DNS filters, with Hubble's semantics: they match only L7 flows
// carrying that record.

// httpStatusFilter matches response codes: "403" exactly, "4+" any 4xx,
// "40+" any of 400-409 (Hubble's syntax).
func httpStatusFilter(values []string) (func(*flowpb.Flow) bool, error) {
	if len(values) == 0 {
		return nil, nil
	}
	type codeRange struct{ lo, hi uint32 }
	var ranges []codeRange
	for _, v := range values {
		digits, prefix := strings.CutSuffix(v, "+")
		n, err := strconv.ParseUint(digits, 10, 32)
		if err != nil || digits == "" || len(digits) > 3 || (!prefix && len(digits) != 3) {
			return nil, fmt.Errorf("field http_status_code: %q: want a code (403) or a prefix (4+, 40+)", v)
		}
		lo := uint32(n)
		hi := lo
		for range 3 - len(digits) {
			lo, hi = lo*10, hi*10+9
		}
		if lo < 100 || lo > 599 {
			return nil, fmt.Errorf("field http_status_code: %q: not an HTTP status", v)
		}
		ranges = append(ranges, codeRange{lo, hi})
	}
	return func(f *flowpb.Flow) bool {
		h := f.GetL7().GetHttp()
		if h == nil || f.GetL7().GetType() != flowpb.L7FlowType_RESPONSE {
			return false
		}
		return slices.ContainsFunc(ranges, func(r codeRange) bool { return h.GetCode() >= r.lo && h.GetCode() <= r.hi })
	}, nil
}

func httpMethodFilter(values []string) (func(*flowpb.Flow) bool, error) {
	if len(values) == 0 {
		return nil, nil
	}
	return func(f *flowpb.Flow) bool {
		h := f.GetL7().GetHttp()
		return h != nil && slices.ContainsFunc(values, func(m string) bool { return strings.EqualFold(m, h.GetMethod()) })
	}, nil
}

func httpURLPath(h *flowpb.HTTP) string {
	u, err := url.Parse(h.GetUrl())
	if err != nil {
		return ""
	}
	return u.Path
}

// httpRegexFilter matches (unanchored) regular expressions against a part
// of the HTTP record, as Hubble's http_path and http_url do.
func httpRegexFilter(field string, values []string, get func(*flowpb.HTTP) string) (func(*flowpb.Flow) bool, error) {
	if len(values) == 0 {
		return nil, nil
	}
	res, err := compileRegexps(field, values)
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		h := f.GetL7().GetHttp()
		if h == nil {
			return false
		}
		v := get(h)
		return slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(v) })
	}, nil
}

func httpHeaderFilter(values []*flowpb.HTTPHeader) (func(*flowpb.Flow) bool, error) {
	if len(values) == 0 {
		return nil, nil
	}
	return func(f *flowpb.Flow) bool {
		h := f.GetL7().GetHttp()
		if h == nil {
			return false
		}
		return slices.ContainsFunc(values, func(want *flowpb.HTTPHeader) bool {
			return slices.ContainsFunc(h.GetHeaders(), func(have *flowpb.HTTPHeader) bool {
				return strings.EqualFold(have.GetKey(), want.GetKey()) && have.GetValue() == want.GetValue()
			})
		})
	}, nil
}

func dnsQueryFilter(values []string) (func(*flowpb.Flow) bool, error) {
	if len(values) == 0 {
		return nil, nil
	}
	res, err := compileRegexps("dns_query", values)
	if err != nil {
		return nil, err
	}
	return func(f *flowpb.Flow) bool {
		d := f.GetL7().GetDns()
		return d != nil && slices.ContainsFunc(res, func(re *regexp.Regexp) bool { return re.MatchString(d.GetQuery()) })
	}, nil
}

func compileRegexps(field string, values []string) ([]*regexp.Regexp, error) {
	out := make([]*regexp.Regexp, 0, len(values))
	for _, v := range values {
		re, err := regexp.Compile(v)
		if err != nil {
			return nil, fmt.Errorf("field %s: %q: %w", field, v, err)
		}
		out = append(out, re)
	}
	return out, nil
}
