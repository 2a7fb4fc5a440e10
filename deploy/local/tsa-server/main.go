// Command tsa-server runs Sigstore's RFC 3161 timestamp authority (its server package, the
// version pinned in go.mod) on one address only.
//
// The upstream timestamp-server command also starts a Prometheus listener on ":2112" (every
// interface, not configurable, fatal when the port is busy). The local stack keeps every
// listener on loopback, so this command serves the same REST API with a file signer and
// serves metrics only when --metrics-port is given, on --host.
package main

import (
	"errors"
	"flag"
	"fmt"
	"net"
	"net/http"
	"os"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spf13/viper"

	"github.com/sigstore/timestamp-authority/v2/pkg/log"
	"github.com/sigstore/timestamp-authority/v2/pkg/server"
)

func main() {
	host := flag.String("host", "127.0.0.1", "address to listen on")
	port := flag.Int("port", 3004, "port of the REST API")
	metricsPort := flag.Int("metrics-port", 0, "port of the Prometheus metrics on --host (0: none)")
	keyPath := flag.String("file-signer-key-path", "", "PEM private key of the timestamping certificate")
	chainPath := flag.String("certificate-chain-path", "", "PEM chain: leaf, intermediates, root")
	logType := flag.String("log-type", "prod", "logger type (dev/prod)")
	flag.Parse()
	if *keyPath == "" || *chainPath == "" {
		fmt.Fprintln(os.Stderr, "tsa-server: --file-signer-key-path and --certificate-chain-path are required")
		os.Exit(2)
	}

	// The settings the upstream command binds from its flags, with its defaults.
	settings := map[string]any{
		"timestamp-signer":            "file",
		"timestamp-signer-hash":       "sha256",
		"file-signer-key-path":        *keyPath,
		"file-signer-passwd":          "",
		"certificate-chain-path":      *chainPath,
		"include-chain-in-response":   false,
		"enforce-intermediate-eku":    true,
		"use-http-201":                false,
		"allow-custom-extensions":     false,
		"max-request-body-size":       uint64(1048576),
		"default-policy-oid":          "1.3.6.1.4.1.57264.2",
		"accepted-policy-oids":        []string{"1.3.6.1.4.1.57264.2"},
		"http-request-id-header-name": "X-Request-Id",
	}
	for key, value := range settings {
		viper.Set(key, value)
	}
	log.ConfigureLogger(*logType)

	timeout := 10 * time.Second
	if *metricsPort > 0 {
		metrics := &http.Server{
			Addr:              net.JoinHostPort(*host, strconv.Itoa(*metricsPort)),
			Handler:           promhttp.Handler(),
			ReadHeaderTimeout: timeout,
		}
		go func() {
			if err := metrics.ListenAndServe(); err != nil && !errors.Is(err, http.ErrServerClosed) {
				log.Logger.Fatalf("metrics listener: %v", err)
			}
		}()
	}

	api := server.NewRestAPIServer(*host, *port, []string{"http"}, false, timeout, timeout)
	api.CleanupTimeout = time.Second
	api.GracefulTimeout = 2 * time.Second
	defer func() {
		if err := api.Shutdown(); err != nil {
			log.Logger.Error(err)
		}
	}()
	log.Logger.Infof("tsa-server: serving on %s", net.JoinHostPort(*host, strconv.Itoa(*port)))
	if err := api.Serve(); err != nil {
		log.Logger.Fatal(err)
	}
}
