package cli

import (
	"context"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/agentapi"
)

// agentQuery is what every command asking a running agent shares: the
// instance flags, -o, and the order of checks before the agent is asked
// (-o first, then the command's own arguments, then the instance name).
type agentQuery struct {
	inst instanceFlags
	out  outputFlag
	// validate checks the command's own arguments and flags; nil: none.
	validate func(cmd *cobra.Command, args []string) error
}

// register adds --instance (and its hidden roots) and -o with the formats
// the command prints besides its default text.
func (q *agentQuery) register(cmd *cobra.Command, formats ...string) {
	q.inst.register(cmd)
	q.inst.registerTimeout(cmd)
	q.out.register(cmd, formats...)
}

// withAgentClient returns a cobra RunE that checks -o and the arguments,
// makes the instance's agent client and calls run with it.
func (q *agentQuery) withAgentClient(run func(ctx context.Context, cmd *cobra.Command, args []string, c *agentapi.Client) error) func(*cobra.Command, []string) error {
	return func(cmd *cobra.Command, args []string) error {
		if err := q.out.check(); err != nil {
			return err
		}
		if q.validate != nil {
			if err := q.validate(cmd, args); err != nil {
				return err
			}
		}
		c, err := q.inst.client()
		if err != nil {
			return err
		}
		return q.inst.explainAgentError(run(cmdContext(cmd), cmd, args, c))
	}
}

// print writes v as indented JSON with -o json, else calls text.
func (o *outputFlag) print(w io.Writer, v any, text func(io.Writer) error) error {
	if o.format == "json" {
		return printJSON(w, v)
	}
	return text(w)
}

// writeListRow writes one table row whose column listCol holds the first
// of list ("" when empty), then a row per further element with only that
// column set, so a multi-valued cell reads top to bottom.
func writeListRow(w io.Writer, cells []string, listCol int, list []string) {
	if len(list) == 0 {
		list = []string{""}
	}
	row := append([]string(nil), cells...)
	row[listCol] = list[0]
	fmt.Fprintln(w, strings.Join(row, "\t"))
	for _, v := range list[1:] {
		cont := make([]string, len(cells))
		cont[listCol] = v
		fmt.Fprintln(w, strings.Join(cont, "\t"))
	}
}
