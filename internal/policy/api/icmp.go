package api

import (
	"fmt"

	"k8s.io/apimachinery/pkg/util/intstr"
)

// icmpTypeNames are the ICMP type names Cilium accepts, per family.
var icmpTypeNames = map[string]map[string]int{
	"IPv4": {
		"EchoReply": 0, "DestinationUnreachable": 3, "Redirect": 5, "Echo": 8, "EchoRequest": 8,
		"RouterAdvertisement": 9, "RouterSelection": 10, "TimeExceeded": 11, "ParameterProblem": 12,
		"Timestamp": 13, "TimestampReply": 14, "Photuris": 40, "ExtendedEchoRequest": 42, "ExtendedEchoReply": 43,
	},
	"IPv6": {
		"DestinationUnreachable": 1, "PacketTooBig": 2, "TimeExceeded": 3, "ParameterProblem": 4,
		"EchoRequest": 128, "EchoReply": 129, "MulticastListenerQuery": 130, "MulticastListenerReport": 131,
		"MulticastListenerDone": 132, "RouterSolicitation": 133, "RouterAdvertisement": 134,
		"NeighborSolicitation": 135, "NeighborAdvertisement": 136, "RedirectMessage": 137,
		"RouterRenumbering": 138, "ICMPNodeInformationQuery": 139, "ICMPNodeInformationResponse": 140,
		"InverseNeighborDiscoverySolicitation": 141, "InverseNeighborDiscoveryAdvertisement": 142,
		"HomeAgentAddressDiscoveryRequest": 144, "HomeAgentAddressDiscoveryReply": 145,
		"MobilePrefixSolicitation": 146, "MobilePrefixAdvertisement": 147,
		"DuplicateAddressRequestCodeSuffix": 157, "DuplicateAddressConfirmationCodeSuffix": 158,
		"ExtendedEchoRequest": 160, "ExtendedEchoReply": 161,
	},
}

// ICMPType returns the ICMP type number of a field (family "" is IPv4).
func ICMPType(f ICMPField) (uint8, error) {
	fam := f.Family
	if fam == "" {
		fam = "IPv4"
	}
	names, ok := icmpTypeNames[fam]
	if !ok {
		return 0, fmt.Errorf("wrong family %q (IPv4 or IPv6)", f.Family)
	}
	if f.Type == nil {
		return 0, fmt.Errorf("type is required")
	}
	if f.Type.Type == intstr.Int {
		if f.Type.IntVal < 0 || f.Type.IntVal > 255 {
			return 0, fmt.Errorf("type %d is out of range 0-255", f.Type.IntVal)
		}
		return uint8(f.Type.IntVal), nil
	}
	if n, ok := names[f.Type.StrVal]; ok {
		return uint8(n), nil
	}
	return 0, fmt.Errorf("unknown %s ICMP type name %q", fam, f.Type.StrVal)
}
