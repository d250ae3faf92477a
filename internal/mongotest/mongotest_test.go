package mongotest_test

import (
	"context"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"

	"github.com/chatscale/chatscale/internal/mongotest"
)

// TestMongoServesTheDriverUntilStopped is not parallel: it checks that no
// goroutine of FerretDB or of the proxy is left, which other tests' servers
// would confuse. Go runs every test that is not parallel before the
// parallel ones.
func TestMongoServesTheDriverUntilStopped(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	env := mongotest.Start(t)

	coll := env.Database.Collection("docs")
	if _, err := coll.InsertOne(ctx, bson.D{{Key: "k", Value: "v"}, {Key: "n", Value: 7}}); err != nil {
		t.Fatalf("InsertOne: %v", err)
	}

	// Another client, as another app instance, sees the write.
	other := env.NewClient().Database(env.Database.Name()).Collection("docs")
	var got struct {
		K string `bson:"k"`
		N int    `bson:"n"`
	}
	if err := other.FindOne(ctx, bson.D{{Key: "k", Value: "v"}}).Decode(&got); err != nil {
		t.Fatalf("FindOne from a second client: %v", err)
	}
	if got.K != "v" || got.N != 7 {
		t.Fatalf("FindOne = %+v; want k=v n=7", got)
	}
	err := other.FindOne(ctx, bson.D{{Key: "k", Value: "absent"}}).Err()
	if err != mongo.ErrNoDocuments {
		t.Fatalf("FindOne of an absent document: %v; want mongo.ErrNoDocuments", err)
	}

	env.Stop()
	env.Stop() // idempotent

	// No goroutine of the server outlives Stop.
	var stacks string
	deadline := time.Now().Add(10 * time.Second)
	for {
		buf := make([]byte, 1<<20)
		stacks = string(buf[:runtime.Stack(buf, true)])
		if !strings.Contains(stacks, "FerretDB/FerretDB") && !strings.Contains(stacks, "mongotest.(*proxy)") {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("FerretDB or proxy goroutines still run after Stop:\n%s", stacks)
		}
		select {
		case <-ctx.Done():
		case <-time.After(10 * time.Millisecond):
		}
	}

	qctx, qcancel := context.WithTimeout(ctx, 20*time.Second)
	defer qcancel()
	for _, c := range []*mongo.Collection{coll, other} {
		if err := c.FindOne(qctx, bson.D{{Key: "k", Value: "v"}}).Err(); err == nil {
			t.Fatal("FindOne succeeded after Stop; want an error")
		}
	}
	if qctx.Err() != nil {
		t.Fatal("FindOne after Stop waited for its context to end; want the driver's error within its selection timeout")
	}
}

func TestMongoDatabasesAreSeparatePerTest(t *testing.T) {
	t.Parallel()
	a, b := mongotest.Start(t), mongotest.Start(t)
	if a.URI == b.URI {
		t.Fatalf("two servers share URI %s", a.URI)
	}
	if a.Database.Name() == b.Database.Name() {
		t.Fatalf("two environments share database %q", a.Database.Name())
	}
}
