package testutil

import (
	"context"
	"errors"
	"net"
	"testing"
	"time"
)

// TestRedisProcStopContKill checks the process fixture on a real
// redis-server: it answers once started, answers nothing while stopped
// (a call then ends only with its ctx), answers again after Cont, and is
// gone after Kill.
func TestRedisProcStopContKill(t *testing.T) {
	p := StartRedis(t)
	c := p.Client()
	defer c.Close()
	ctx := context.Background()
	if err := c.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	p.Stop()
	short, cancel := context.WithTimeout(ctx, 200*time.Millisecond)
	err := c.Get(short, "k").Err()
	cancel()
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("GET from a stopped server: err = %v; want a timeout", err)
	}
	p.Cont()
	if v, err := c.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("GET after Cont = %q, %v; want v", v, err)
	}
	p.Kill()
	select {
	case <-p.Exited():
	default:
		t.Fatal("Kill returned before the process exited")
	}
	short, cancel = context.WithTimeout(ctx, time.Second)
	defer cancel()
	if err := c.Ping(short).Err(); err == nil {
		t.Fatal("PING answered after Kill")
	}
	p.Kill() // idempotent
}

// TestSentinelSet checks that the set's Sentinel knows its master and
// replica, that the replica gets the master's writes, and that the
// Sentinel promotes the replica when the master is killed.
func TestSentinelSet(t *testing.T) {
	set := StartSentinelSet(t, 1, 500*time.Millisecond)
	ctx := context.Background()
	if addr, err := set.MasterAddr(ctx); err != nil || addr != set.Master.Addr {
		t.Fatalf("MasterAddr = %q, %v; want %q", addr, err, set.Master.Addr)
	}
	fc := set.FailoverClient(nil)
	if err := fc.Set(ctx, "k", "v", 0).Err(); err != nil {
		t.Fatal(err)
	}
	if n, err := fc.Wait(ctx, 1, 5*time.Second).Result(); err != nil || n != 1 {
		t.Fatalf("WAIT 1 = %d, %v; want 1", n, err)
	}
	set.Master.Kill()
	if !Eventually(30*time.Second, func() bool {
		addr, err := set.MasterAddr(ctx)
		return err == nil && addr == set.Replicas[0].Addr
	}) {
		t.Fatal("the Sentinel never promoted the replica")
	}
	r := set.Replicas[0].Client()
	defer r.Close()
	if v, err := r.Get(ctx, "k").Result(); err != nil || v != "v" {
		t.Fatalf("GET on the promoted replica = %q, %v; want v", v, err)
	}
}
