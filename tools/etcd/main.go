// Command etcd is etcd v3.7's server, built from the Go module proxy for
// `bulwark cluster up` and the Kubernetes-mode tests.
//
// It lives in its own module because go.etcd.io/etcd/server/v3 can only be
// required with replace directives for etcd's sibling modules.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
