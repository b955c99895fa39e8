package cli

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/bulwark-net/bulwark/internal/cni/install"
)

// newInstallCNICmd copies the CNI plugin into a node's CNI bin directory:
// the DaemonSet's init container (deploy/helm/bulwark).
func newInstallCNICmd() *cobra.Command {
	var from, to string
	cmd := &cobra.Command{
		Use:   "install-cni",
		Short: "Install the bulwark-cni plugin binary into a CNI bin directory (atomically)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if from == "" {
				self, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find the plugin beside this binary: %w (give --from)", err)
				}
				from = filepath.Join(filepath.Dir(self), install.PluginName)
			}
			if err := install.Binary(from, to, install.PluginName); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "installed %s as %s\n", from, filepath.Join(to, install.PluginName))
			return nil
		},
	}
	cmd.Flags().StringVar(&from, "from", "", "the plugin binary (default: bulwark-cni beside this binary)")
	cmd.Flags().StringVar(&to, "to", "/opt/cni/bin", "the node's CNI bin directory")
	return cmd
}
