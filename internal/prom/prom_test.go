package prom_test

import (
	"errors"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/internal/prom"
)

func counter(o prom.Opts, name string) prometheus.Counter {
	return prometheus.NewCounter(prometheus.CounterOpts{Name: o.Name("pkg", name), ConstLabels: o.Labels("k", "v")})
}

func TestRegisterAllOrNothing(t *testing.T) {
	reg := prometheus.NewRegistry()
	o := prom.Opts{Registerer: reg}
	taken := counter(o, "b_total")
	if err := reg.Register(taken); err != nil {
		t.Fatal(err)
	}
	_, err := prom.Register("pkg", reg, counter(o, "a_total"), counter(o, "b_total"))
	var are prometheus.AlreadyRegisteredError
	if !errors.As(err, &are) {
		t.Fatalf("Register over a taken name = %v; want AlreadyRegisteredError", err)
	}
	// a_total was rolled back: registering it again works.
	if err := reg.Register(counter(o, "a_total")); err != nil {
		t.Fatalf("a_total left registered: %v", err)
	}
}

func TestUnregisterRestoresRegistry(t *testing.T) {
	reg := prometheus.NewRegistry()
	o := prom.Opts{Registerer: reg, Namespace: "x", ConstLabels: prometheus.Labels{"instance": "a"}}
	r, err := prom.Register("pkg", reg, counter(o, "a_total"))
	if err != nil {
		t.Fatal(err)
	}
	mfs, _ := reg.Gather()
	if len(mfs) != 1 || mfs[0].GetName() != "x_pkg_a_total" || len(mfs[0].Metric[0].Label) != 2 {
		t.Fatalf("gathered %v; want x_pkg_a_total with labels instance and k", mfs)
	}
	r.Unregister()
	r.Unregister()
	if mfs, _ := reg.Gather(); len(mfs) != 0 {
		t.Fatalf("after Unregister: %v; want nothing", mfs)
	}
	var none *prom.Registration
	none.Unregister() // a nil Registration is valid
	if r, err := prom.Register("pkg", nil, counter(o, "a_total")); err != nil || r == nil {
		t.Fatalf("Register(nil registerer) = %v, %v; want an empty Registration", r, err)
	}
}

func TestDefaultNamespace(t *testing.T) {
	if got := (prom.Opts{}).Name("ratelimit", "decisions_total"); got != "ai_chat_ratelimit_decisions_total" {
		t.Fatalf("Name = %q", got)
	}
	if got := (prom.Opts{}).Name("", "requests_total"); got != "ai_chat_requests_total" {
		t.Fatalf("Name = %q", got)
	}
}

func TestCheckLabels(t *testing.T) {
	if err := prom.CheckLabels("pkg", prometheus.Labels{"instance": "a"}, "tier"); err != nil {
		t.Fatalf("CheckLabels(instance) = %v", err)
	}
	err := prom.CheckLabels("pkg", prometheus.Labels{"tier": "a"}, "tier")
	var ce *chatscale.ConfigError
	if !errors.As(err, &ce) || ce.Field != "Config.ConstLabels" || ce.Package != "pkg" {
		t.Fatalf("CheckLabels(tier) = %v; want a ConfigError for Config.ConstLabels", err)
	}
}
