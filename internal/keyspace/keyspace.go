// Package keyspace holds the checks every package applies to the parts of
// its Redis keys that a host configures (prefixes, names, hash tags), so
// that they are checked one way.
package keyspace

import (
	"strings"

	"github.com/chatscale/chatscale"
)

// Check returns a *chatscale.ConfigError when v, the value of the Config
// field named field of package pkg, holds '{' or '}': hash tags are the
// packages' own business, a brace in a configured part would move keys
// between Redis Cluster slots.
func Check(pkg, field, v string) error {
	if strings.ContainsAny(v, "{}") {
		return &chatscale.ConfigError{Package: pkg, Field: field, Reason: "contains '{' or '}'"}
	}
	return nil
}
