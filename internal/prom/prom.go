// Package prom holds the Prometheus conventions every package follows:
// names under one namespace, constant labels set by the host, registration
// that is all or nothing and undone by Close.
package prom

import (
	"errors"
	"fmt"
	"sync"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatscale/chatscale"
)

// Opts are the metric settings every Config carries.
type Opts struct {
	// Registerer receives the collectors; nil means no metrics.
	Registerer prometheus.Registerer
	// Namespace starts every metric name; empty means
	// chatscale.DefaultNamespace.
	Namespace string
	// ConstLabels are added to every series.
	ConstLabels prometheus.Labels
}

// Name returns the full metric name: namespace, subsystem (when not empty)
// and name joined by '_'.
func (o Opts) Name(subsystem, name string) string {
	ns := o.Namespace
	if ns == "" {
		ns = chatscale.DefaultNamespace
	}
	return prometheus.BuildFQName(ns, subsystem, name)
}

// Labels returns the constant labels with extra name/value pairs added.
func (o Opts) Labels(extra ...string) prometheus.Labels {
	l := make(prometheus.Labels, len(o.ConstLabels)+len(extra)/2)
	for k, v := range o.ConstLabels {
		l[k] = v
	}
	for i := 0; i+1 < len(extra); i += 2 {
		l[extra[i]] = extra[i+1]
	}
	return l
}

// Registration is a set of collectors registered together.
type Registration struct {
	reg  prometheus.Registerer
	cs   []prometheus.Collector
	once sync.Once
}

// Register registers cs on reg, all or nothing: when one is refused, the
// ones already registered are unregistered and the error, prefixed with
// pkg, is returned. A nil reg registers nothing and returns an empty
// Registration. Unregister undoes it.
func Register(pkg string, reg prometheus.Registerer, cs ...prometheus.Collector) (*Registration, error) {
	r := &Registration{reg: reg}
	if reg == nil {
		return r, nil
	}
	for i, c := range cs {
		if err := reg.Register(c); err != nil {
			for _, done := range cs[:i] {
				reg.Unregister(done)
			}
			var are prometheus.AlreadyRegisteredError
			if errors.As(err, &are) {
				return nil, fmt.Errorf("%s: registering metrics: %w (give each instance on one registry its own Config.ConstLabels or Name)", pkg, err)
			}
			return nil, fmt.Errorf("%s: registering metrics: %w", pkg, err)
		}
	}
	r.cs = cs
	return r, nil
}

// Unregister removes the collectors from the registry. Later calls do
// nothing. A nil Registration is valid.
func (r *Registration) Unregister() {
	if r == nil {
		return
	}
	r.once.Do(func() {
		for _, c := range r.cs {
			r.reg.Unregister(c)
		}
	})
}

// CheckLabels returns a *chatscale.ConfigError when Config.ConstLabels of
// package pkg hold one of the labels the package sets itself, so that the
// clash is reported as a bad Config, by every package the same way,
// rather than as a registration error or a label silently overwritten.
func CheckLabels(pkg string, labels prometheus.Labels, own ...string) error {
	for _, l := range own {
		if _, ok := labels[l]; ok {
			return &chatscale.ConfigError{Package: pkg, Field: "Config.ConstLabels", Reason: fmt.Sprintf("holds %q, a label the package sets", l)}
		}
	}
	return nil
}
