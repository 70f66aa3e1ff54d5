package main

import (
	"bytes"
	"context"
	"fmt"

	"github.com/google/go-sev-guest/client"
)

// newSevGuestDevice adapts d without pacing (a fake device, or a kernel
// that handles host throttling itself).
func newSevGuestDevice(d client.Device, name string) teeDevice {
	return newPacedSevGuestDevice(d, name, 0)
}

// extendedReport returns a report with the certificate table the host
// provides (SNP_GET_EXT_REPORT): two device commands.
func (d *sevGuestDevice) extendedReport(ctx context.Context, reportData [64]byte) (report, certs []byte, err error) {
	var table []byte
	report, err = d.gate.run(ctx, func() ([]byte, error) {
		r, c, err := client.GetRawExtendedReport(d.dev, reportData)
		if err != nil {
			return nil, fmt.Errorf("%s SNP_GET_EXT_REPORT: %w", d.name, err)
		}
		table = c
		return bytes.Clone(r[:reportSize]), nil
	})
	return report, table, err
}
