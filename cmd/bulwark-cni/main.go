// Command bulwark-cni is Bulwark's CNI plugin, run by the container runtime
// for every pod; the plugin itself is internal/cni.
package main

import "github.com/bulwark-net/bulwark/internal/cni"

func main() { cni.Main() }
