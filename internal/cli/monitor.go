package cli

import (
	"fmt"
	"io"
	"strconv"

	flowpb "github.com/cilium/cilium/api/v1/flow"
	observerpb "github.com/cilium/cilium/api/v1/observer"
	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/monitor"
)

// monitorFlags are cilium monitor's flags.
type monitorFlags struct {
	types               []string
	from, to, relatedTo []string
	json                bool
}

func newMonitorCmd() *cobra.Command {
	var srv hubbleServerFlags
	var f monitorFlags
	cmd := &cobra.Command{
		Use:   "monitor",
		Short: "Stream datapath events live (drops, policy verdicts, traces), as cilium monitor",
		Long: `Stream the datapath's events as they happen, one line per event in the style
of cilium monitor, or one JSON object per event with -j. --from/--to/--related-to
take endpoint IDs ('bulwark endpoint list'); an event shows when its source is
one of --from, its destination one of --to, or either side one of --related-to.`,
		Example: `  bulwark monitor
  bulwark monitor --type policy-verdict
  bulwark monitor --type drop
  bulwark monitor --from 1234 --to 1234`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			req, epFilter, err := f.request()
			if err != nil {
				return err
			}
			connected := func(target string) {
				if !f.json {
					fmt.Fprintf(cmd.ErrOrStderr(), "Listening for events on %s\nPress Ctrl-C to quit\n", target)
				}
			}
			return srv.follow(cmd, followOptions{what: "monitor events", req: req, connected: connected,
				each: monitorPrinter(cmd.OutOrStdout(), f.json, epFilter)})
		},
	}
	srv.register(cmd)
	fl := cmd.Flags()
	fl.StringSliceVarP(&f.types, "type", "t", nil, "event types to show: drop, policy-verdict, trace (default all)")
	fl.StringSliceVar(&f.from, "from", nil, "show events whose source is this endpoint ID")
	fl.StringSliceVar(&f.to, "to", nil, "show events whose destination is this endpoint ID")
	fl.StringSliceVar(&f.relatedTo, "related-to", nil, "show events from or to this endpoint ID")
	fl.BoolVarP(&f.json, "json", "j", false, "print one JSON object per event")
	return cmd
}

// monitorPrinter prints each event epFilter matches as a cilium monitor
// line, or as one JSON object with asJSON, and each loss notice.
func monitorPrinter(out io.Writer, asJSON bool, epFilter monitor.EndpointFilter) func(*observerpb.GetFlowsResponse) error {
	return func(resp *observerpb.GetFlowsResponse) error {
		if lost := resp.GetLostEvents(); lost != nil {
			if asJSON {
				_, err := fmt.Fprintf(out, "{\"type\":\"lost\",\"lost\":%d}\n", lost.GetNumEventsLost())
				return err
			}
			_, err := fmt.Fprintf(out, "Lost %d events\n", lost.GetNumEventsLost())
			return err
		}
		fl := resp.GetFlow()
		if fl == nil || !epFilter.Match(fl) {
			return nil
		}
		if asJSON {
			b, err := monitor.JSON(fl)
			if err != nil {
				return err
			}
			_, err = fmt.Fprintf(out, "%s\n", b)
			return err
		}
		_, err := fmt.Fprintln(out, monitor.Line(fl))
		return err
	}
}

// request builds the follow request (live events only) and the endpoint
// filter applied to what arrives.
func (f *monitorFlags) request() (*observerpb.GetFlowsRequest, monitor.EndpointFilter, error) {
	var ef monitor.EndpointFilter
	req := &observerpb.GetFlowsRequest{Follow: true}
	if len(f.types) > 0 {
		ff := &flowpb.FlowFilter{}
		for _, t := range f.types {
			typ, err := monitor.ParseType(t)
			if err != nil {
				return nil, ef, fmt.Errorf("--type: %w", err)
			}
			ff.EventType = append(ff.EventType, &flowpb.EventTypeFilter{Type: typ.MonitorType()})
		}
		req.Whitelist = []*flowpb.FlowFilter{ff}
	}
	for _, g := range []struct {
		flag string
		in   []string
		out  *[]uint32
	}{{"from", f.from, &ef.From}, {"to", f.to, &ef.To}, {"related-to", f.relatedTo, &ef.Related}} {
		for _, v := range g.in {
			n, err := strconv.ParseUint(v, 10, 32)
			if err != nil {
				return nil, ef, fmt.Errorf("--%s %q: not an endpoint ID", g.flag, v)
			}
			*g.out = append(*g.out, uint32(n))
		}
	}
	return req, ef, nil
}
