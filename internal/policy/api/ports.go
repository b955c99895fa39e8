package api

import (
	"bytes"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"

	"github.com/bulwark-net/bulwark/internal/policy/resolved"
)

// Port is a port as written: a number ("80", or 80 unquoted in YAML) or an
// IANA service name ("http"). It is kept as a string; ParsePort reads it.
type Port string

// UnmarshalJSON accepts a JSON string or a JSON integer.
func (p *Port) UnmarshalJSON(b []byte) error {
	b = bytes.TrimSpace(b)
	if len(b) > 0 && b[0] == '"' {
		var s string
		if err := json.Unmarshal(b, &s); err != nil {
			return err
		}
		*p = Port(s)
		return nil
	}
	if bytes.Equal(b, []byte("null")) {
		*p = ""
		return nil
	}
	var n json.Number
	if err := json.Unmarshal(b, &n); err != nil {
		return fmt.Errorf("port must be a number or a name: %w", err)
	}
	if _, err := n.Int64(); err != nil {
		return fmt.Errorf("port %s is not an integer", n)
	}
	*p = Port(n.String())
	return nil
}

// PortSpec is a parsed port: a number (0 means every port) or a name.
type PortSpec struct {
	Number uint16 // set when Name is empty
	Name   string // IANA service name, lower case
	End    uint16 // end of the range (inclusive); 0 when not a range
}

// IsNamed reports whether the port is an IANA service name.
func (s PortSpec) IsNamed() bool { return s.Name != "" }

// Range returns the inclusive numeric range (0..0 for "every port"). It is
// meaningless for named ports.
func (s PortSpec) Range() (lo, hi uint16) {
	if s.End > s.Number {
		return s.Number, s.End
	}
	return s.Number, s.Number
}

// IsSvcName reports whether s is a valid IANA service name (RFC 6335
// section 5.1): 1-15 characters of [a-z0-9-], at least one letter, no
// leading, trailing or doubled hyphen. Case is ignored, as in Cilium.
func IsSvcName(s string) bool {
	if len(s) == 0 || len(s) > 15 {
		return false
	}
	s = strings.ToLower(s)
	letter := false
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z':
			letter = true
		case c >= '0' && c <= '9':
		case c == '-':
			if i == 0 || i == len(s)-1 || s[i-1] == '-' {
				return false
			}
		default:
			return false
		}
	}
	return letter
}

// ParsePort reads a port and its end: a number 0..65535 (0 = every port;
// base prefixes such as 0x are accepted as in Cilium) or an IANA service
// name. endPort must be 0 or >= port, and is not allowed with a name.
func ParsePort(port Port, endPort int32) (PortSpec, error) {
	p := strings.TrimSpace(string(port))
	if p == "" {
		return PortSpec{}, fmt.Errorf("port must be specified")
	}
	if IsSvcName(p) {
		if endPort != 0 {
			return PortSpec{}, fmt.Errorf("endPort %d cannot be used with named port %q", endPort, p)
		}
		return PortSpec{Name: strings.ToLower(p)}, nil
	}
	n, err := strconv.ParseUint(p, 0, 16)
	if err != nil {
		if _, errBig := strconv.ParseUint(p, 0, 64); errBig == nil {
			return PortSpec{}, fmt.Errorf("port %q is out of range 0-65535", p)
		}
		return PortSpec{}, fmt.Errorf("port %q is neither a number 0-65535 nor an IANA service name (1-15 of [a-z0-9-], at least one letter, no leading, trailing or double hyphen)", p)
	}
	spec := PortSpec{Number: uint16(n)}
	switch {
	case endPort == 0:
	case endPort < 0 || endPort > 65535:
		return PortSpec{}, fmt.Errorf("endPort %d is out of range 1-65535", endPort)
	case n == 0:
		return PortSpec{}, fmt.Errorf("endPort %d cannot be used with port 0 (every port)", endPort)
	case uint64(endPort) < n:
		return PortSpec{}, fmt.Errorf("endPort %d is less than port %d", endPort, n)
	default:
		spec.End = uint16(endPort)
	}
	return spec, nil
}

// Parse reads the port of a PortProtocol (see ParsePort).
func (pp PortProtocol) Parse() (PortSpec, error) { return ParsePort(pp.Port, pp.EndPort) }

// L4Proto is a protocol name as written: TCP, UDP, SCTP, ANY (or empty,
// meaning ANY), and ICMP/ICMPv6 as some Cilium versions allow. Case matters,
// as in the CRD schema.
type L4Proto string

// The protocols of PortProtocol.
const (
	ProtoTCP    L4Proto = "TCP"
	ProtoUDP    L4Proto = "UDP"
	ProtoSCTP   L4Proto = "SCTP"
	ProtoICMP   L4Proto = "ICMP"
	ProtoICMPv6 L4Proto = "ICMPv6"
	ProtoAny    L4Proto = "ANY"
)

// ParseProtocol maps a protocol name to its number; "" and "ANY" are
// resolved.ProtoAny.
func ParseProtocol(p L4Proto) (resolved.Protocol, error) {
	switch p {
	case "", ProtoAny:
		return resolved.ProtoAny, nil
	case ProtoTCP:
		return resolved.ProtoTCP, nil
	case ProtoUDP:
		return resolved.ProtoUDP, nil
	case ProtoSCTP:
		return resolved.ProtoSCTP, nil
	case ProtoICMP:
		return resolved.ProtoICMP, nil
	case ProtoICMPv6:
		return resolved.ProtoICMPv6, nil
	}
	return 0, fmt.Errorf("protocol %q is not one of TCP, UDP, SCTP, ANY", string(p))
}

// Proto returns the protocol number of a PortProtocol (see ParseProtocol).
func (pp PortProtocol) Proto() (resolved.Protocol, error) { return ParseProtocol(pp.Protocol) }
