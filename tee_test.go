package main

// openTEE finds the guest interface where Linux puts it.
func openTEE(opts teeOptions) (teeDevice, error) {
	return openTEEFrom(opts, defaultGuestInterfaces)
}
