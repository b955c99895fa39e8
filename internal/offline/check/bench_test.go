package check

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"testing"

	"github.com/bulwark-net/bulwark/internal/policy/policytest"
)

// flowsFile returns n JSON-lines flows over the standard synthetic state:
// pod to pod by name, pod to pod by IP, pod to the outside world.
func flowsFile(st *policytest.State, n int) []byte {
	var b bytes.Buffer
	protos := []string{"TCP", "UDP", "SCTP"}
	for i := 0; i < n; i++ {
		src := st.Pods[(i*7919)%len(st.Pods)]
		dst := st.Pods[(i*104729)%len(st.Pods)]
		f := Flow{Src: src.Namespace + "/" + src.Name, Dst: dst.Namespace + "/" + dst.Name, Port: 8000 + i%100, Protocol: protos[i%3]}
		switch i % 4 {
		case 1:
			f.Dst = dst.Status.PodIP
		case 2:
			f.Dst = fmt.Sprintf("172.%d.%d.9", 16+i%16, i%3)
		case 3:
			f.Src, f.Dst = fmt.Sprintf("192.168.%d.1", i%256), f.Src
		}
		line, _ := json.Marshal(f)
		b.Write(line)
		b.WriteByte('\n')
	}
	return b.Bytes()
}

// BenchmarkCheck100kFlows: `bulwark policy check -o json` on 100k flows
// against the standard state (state loading excluded; see
// internal/policy BenchmarkResolveFull for that).
func BenchmarkCheck100kFlows(b *testing.B) {
	ps := policytest.Build(policytest.Standard)
	st, err := FromObjects(ps.Objects()...)
	if err != nil {
		b.Fatal(err)
	}
	flows := flowsFile(ps, 100_000)
	b.ReportAllocs()
	b.SetBytes(int64(len(flows)))
	for b.Loop() {
		enc := json.NewEncoder(io.Discard)
		n := 0
		if err := st.Run(bytes.NewReader(flows), func(r Result) error { n++; return enc.Encode(r) }); err != nil {
			b.Fatal(err)
		}
		if n != 100_000 {
			b.Fatalf("%d results", n)
		}
	}
}
