package main

// Pins the modules the package is being built on while its files are
// written in parallel; removed once every import is real.
import (
	_ "github.com/google/go-sev-guest/abi"
	_ "github.com/google/go-sev-guest/client"
	_ "github.com/google/go-sev-guest/kds"
	_ "github.com/google/go-sev-guest/testing"
	_ "github.com/google/go-sev-guest/verify"
	_ "golang.org/x/sys/unix"
)
