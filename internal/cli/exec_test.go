package cli

import (
	"bytes"
	"strings"
	"testing"
)

func TestExecArgs(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"exec", "pod"}, "usage: bulwark exec"},
		{[]string{"exec", "--", "ls"}, "usage: bulwark exec"},
		{[]string{"exec", "a", "b", "--", "ls"}, "usage: bulwark exec"},
		{[]string{"exec", "--instance", "no-such-instance-x", "-n", "demo", "deploy/frontend", "--", "true"}, `sandbox instance "no-such-instance-x" does not exist`},
	}
	for _, c := range cases {
		root := NewRootCmd()
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(c.args)
		err := root.Execute()
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: error %v, want %q", c.args, err, c.want)
		}
	}
}
