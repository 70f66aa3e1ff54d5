module skr

go 1.26.0

require (
	github.com/google/go-sev-guest v0.15.0
	golang.org/x/sys v0.50.0
)

require (
	github.com/google/go-configfs-tsm v0.2.2 // indirect
	github.com/google/logger v1.1.1 // indirect
	github.com/google/uuid v1.6.0 // indirect
	go.uber.org/multierr v1.11.0 // indirect
	golang.org/x/crypto v0.17.0 // indirect
	google.golang.org/protobuf v1.33.0 // indirect
)
