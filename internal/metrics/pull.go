package metrics

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/bulwark-net/bulwark/internal/datapath/event"
)

// pullCollector reads the datapath and agent state at scrape time.
type pullCollector struct {
	m        *Metrics
	prefixes []string
	descs    []pullDescs // one per prefix
}

type pullDescs struct {
	dropCount, dropBytes, forwardCount, forwardBytes *prometheus.Desc
	mapPressure, eventLost, pathCount                *prometheus.Desc
	enforcement, identity                            *prometheus.Desc
}

func (c *pullCollector) init() {
	if c.descs != nil {
		return
	}
	for i, p := range c.prefixes {
		c.descs = append(c.descs, pullDescs{
			dropCount:    prometheus.NewDesc(p+"_drop_count_total", "Dropped packets by reason and direction", []string{"reason", "direction"}, nil),
			dropBytes:    prometheus.NewDesc(p+"_drop_bytes_total", "Dropped bytes by reason and direction", []string{"reason", "direction"}, nil),
			forwardCount: prometheus.NewDesc(p+"_forward_count_total", "Forwarded packets by direction", []string{"direction"}, nil),
			forwardBytes: prometheus.NewDesc(p+"_forward_bytes_total", "Forwarded bytes by direction", []string{"direction"}, nil),
			mapPressure:  prometheus.NewDesc(p+"_bpf_map_pressure", "Fill ratio (0..1) of each BPF map", []string{"map_name"}, nil),
			eventLost:    prometheus.NewDesc(p+"_event_lost_total", "Datapath events lost before the agent read them", nil, nil),
			pathCount: prometheus.NewDesc(p+"_datapath_path_packets_total",
				"Forwarded packets that took a datapath shortcut (fast: established fast path; local_delivery: handed to a local pod by the source's hook), by direction",
				[]string{"path", "direction"}, nil),
			enforcement: prometheus.NewDesc(p+"_policy_endpoint_enforcement_status",
				"Local endpoints by policy enforcement", []string{"enforcement"}, nil),
			identity: prometheus.NewDesc(p+"_identity", "Security identities by type", []string{"type"}, nil),
		})
		if i > 0 { // Bulwark's own series: not under Cilium's names
			c.descs[i].pathCount = nil
		}
	}
}

// Describe sends the descriptors of the series the configured sources can
// produce.
func (c *pullCollector) Describe(ch chan<- *prometheus.Desc) {
	c.init()
	for _, d := range c.descs {
		if c.m.opts.Datapath != nil {
			ch <- d.dropCount
			ch <- d.dropBytes
			ch <- d.forwardCount
			ch <- d.forwardBytes
			ch <- d.mapPressure
			ch <- d.eventLost
			if d.pathCount != nil {
				ch <- d.pathCount
			}
		}
		if c.m.opts.State != nil {
			ch <- d.enforcement
			ch <- d.identity
		}
	}
}

// Collect reads the sources once and emits every prefix's series.
func (c *pullCollector) Collect(ch chan<- prometheus.Metric) {
	c.init()
	if dp := c.m.opts.Datapath; dp != nil {
		c.collectDatapath(ch, dp)
	}
	if st := c.m.opts.State; st != nil {
		enf := st.Enforcement()
		ids := st.Identities()
		for i, d := range c.descs {
			if i == 0 {
				for _, kv := range []struct {
					label string
					n     int
				}{{"none", enf.None}, {"ingress", enf.Ingress}, {"egress", enf.Egress}, {"both", enf.Both}} {
					ch <- prometheus.MustNewConstMetric(d.enforcement, prometheus.GaugeValue, float64(kv.n), kv.label)
				}
			} else {
				// Cilium-compatible dashboards ask for enforcement="true":
				// endpoints enforcing in at least one direction.
				ch <- prometheus.MustNewConstMetric(d.enforcement, prometheus.GaugeValue,
					float64(enf.Ingress+enf.Egress+enf.Both), "true")
				ch <- prometheus.MustNewConstMetric(d.enforcement, prometheus.GaugeValue, float64(enf.None), "false")
			}
			for typ, n := range ids {
				ch <- prometheus.MustNewConstMetric(d.identity, prometheus.GaugeValue, float64(n), typ)
			}
		}
	}
}

func (c *pullCollector) collectDatapath(ch chan<- prometheus.Metric, dp Datapath) {
	samples, err := dp.Traffic()
	if err != nil {
		for _, d := range c.descs {
			ch <- prometheus.NewInvalidMetric(d.dropCount, err)
		}
	}
	pressure := dp.MapPressure()
	lost := dp.EventsLost()
	for i, d := range c.descs {
		// Several samples may share labels once reasons are renamed to
		// Cilium's wording: sum them.
		type key struct{ reason, dir string }
		drops := map[key][2]float64{}
		fwd := map[string][2]float64{}
		for _, s := range samples {
			dir := directionLabel(i, s.Direction)
			if s.Path != "" {
				if d.pathCount != nil {
					ch <- prometheus.MustNewConstMetric(d.pathCount, prometheus.CounterValue, float64(s.Packets), s.Path, dir)
				}
				continue
			}
			switch s.Verdict {
			case event.Dropped:
				k := key{reasonLabel(i, s.Reason), dir}
				v := drops[k]
				drops[k] = [2]float64{v[0] + float64(s.Packets), v[1] + float64(s.Bytes)}
			default:
				v := fwd[dir]
				fwd[dir] = [2]float64{v[0] + float64(s.Packets), v[1] + float64(s.Bytes)}
			}
		}
		for k, v := range drops {
			ch <- prometheus.MustNewConstMetric(d.dropCount, prometheus.CounterValue, v[0], k.reason, k.dir)
			ch <- prometheus.MustNewConstMetric(d.dropBytes, prometheus.CounterValue, v[1], k.reason, k.dir)
		}
		for dir, v := range fwd {
			ch <- prometheus.MustNewConstMetric(d.forwardCount, prometheus.CounterValue, v[0], dir)
			ch <- prometheus.MustNewConstMetric(d.forwardBytes, prometheus.CounterValue, v[1], dir)
		}
		for name, v := range pressure {
			ch <- prometheus.MustNewConstMetric(d.mapPressure, prometheus.GaugeValue, v, name)
		}
		ch <- prometheus.MustNewConstMetric(d.eventLost, prometheus.CounterValue, float64(lost))
	}
}
