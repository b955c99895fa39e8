package observer

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/hex"
	"sync/atomic"
)

// flowIDs hands out flow UUIDs: a random per-observer prefix and a
// sequence number, laid out as an RFC 9562 version 8 UUID. Unique per
// observer run without a random read per flow.
type flowIDs struct {
	prefix [8]byte
	seq    atomic.Uint64
}

func newFlowIDs() *flowIDs {
	ids := &flowIDs{}
	_, _ = rand.Read(ids.prefix[:]) // crypto/rand.Read never fails on Linux
	return ids
}

func (ids *flowIDs) next() string {
	var b [16]byte
	copy(b[:8], ids.prefix[:])
	binary.BigEndian.PutUint64(b[8:], ids.seq.Add(1))
	b[6] = b[6]&0x0f | 0x80 // version 8
	b[8] = b[8]&0x3f | 0x80 // RFC 9562 variant
	var s [36]byte
	hex.Encode(s[0:8], b[0:4])
	s[8] = '-'
	hex.Encode(s[9:13], b[4:6])
	s[13] = '-'
	hex.Encode(s[14:18], b[6:8])
	s[18] = '-'
	hex.Encode(s[19:23], b[8:10])
	s[23] = '-'
	hex.Encode(s[24:36], b[10:16])
	return string(s[:])
}
