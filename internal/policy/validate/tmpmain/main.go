package main

import (
	"fmt"
	"os"

	"github.com/bulwark-net/bulwark/internal/manifest"
	"github.com/bulwark-net/bulwark/internal/policy/validate"
)

func main() {
	set, errs, err := manifest.Load(os.Args[1:]...)
	if err != nil {
		fmt.Println(err)
		os.Exit(2)
	}
	for _, f := range validate.Run(set, errs, validate.Options{}) {
		fmt.Println(f)
	}
}
