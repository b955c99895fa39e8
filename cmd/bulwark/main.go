// Command bulwark is Bulwark's single binary: the agent, the sandbox node and
// every client command.
package main

import (
	"os"

	"github.com/bulwark-net/bulwark/internal/cli"
)

func main() {
	os.Exit(cli.Execute())
}
