package mongotest_test

import (
	"context"
	"fmt"
	"net/url"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/chatscale/chatscale/chat"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/contextcache/mongosource"
	"github.com/chatscale/chatscale/internal/faulttest"
	"github.com/chatscale/chatscale/internal/mongotest"
	tu "github.com/chatscale/chatscale/internal/testutil"
)

// TestTranscriptSourceGoneUnderLoad stops the MongoDB-wire server from
// answering (a loopback proxy in front of it stops forwarding) while 200
// learners ask through 4 instances, each with its own MongoDB and Redis
// clients, then lets it answer again. The caches' TTLs are cut to seconds
// so that copies go stale during the outage.
func TestTranscriptSourceGoneUnderLoad(t *testing.T) {
	faulttest.Require(t)
	env := mongotest.Start(t)
	course := bson.NewObjectID()
	videos := make([]string, 20)
	coll := env.Database.Collection("transcripts")
	for i := range videos {
		videos[i] = fmt.Sprintf("https://videos.example/%d", i)
		_, err := coll.InsertOne(context.Background(), bson.D{
			{Key: "courseId", Value: course}, {Key: "videoUrl", Value: videos[i]},
			{Key: "title", Value: fmt.Sprintf("Part %d", i)},
			{Key: "transcript", Value: fmt.Sprintf("Part %d explains one idea with an example.", i)},
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	u, err := url.Parse(env.URI)
	if err != nil {
		t.Fatal(err)
	}
	proxy := tu.NewProxy(t, u.Host)
	rdb := tu.Redis(t)
	fake := tu.OpenAI(t, tu.OpenAIConfig{})
	cl := faulttest.Start(t, faulttest.Options{
		Redis:  func() redis.UniversalClient { return rdb.NewClient() },
		Prefix: rdb.Prefix,
		NewSource: func() contextcache.Source {
			c := env.NewClient(options.Client().ApplyURI("mongodb://" + proxy.Addr() + "/"))
			src, err := mongosource.New(c.Database(env.Database.Name()).Collection("transcripts"), mongosource.Config{Timeout: 500 * time.Millisecond})
			if err != nil {
				t.Fatal(err)
			}
			return src
		},
		UpstreamURL: fake.URL,
		Cache: contextcache.Config{
			L1TTL: time.Second, L2TTL: 2 * time.Second,
			LoadTimeout: time.Second, RetrySourceAfter: time.Second,
		},
		Service: chat.ServiceConfig{TurnTimeout: 4 * time.Second},
	})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan *faulttest.Tally, 1)
	go func() {
		done <- cl.Run(ctx, faulttest.Load{Learners: 200, Course: course.Hex(), Videos: videos, Think: 100 * time.Millisecond, TurnTimeout: 5 * time.Second})
	}()
	pause := func(d time.Duration) {
		select {
		case <-time.After(d):
		case <-ctx.Done():
		}
	}
	t0 := time.Now()
	pause(3 * time.Second)
	gone := time.Now()
	proxy.Hang()
	pause(4 * time.Second)
	proxy.Heal()
	back := time.Now()
	pause(4 * time.Second)
	cancel()
	tally := <-done
	t.Logf("upstream attempts per turn over the run: %.2f (%d for %d turns)", float64(fake.Requests())/float64(max(1, tally.All().Turns())), fake.Requests(), tally.All().Turns())

	before, down := tally.Between(t0, gone), tally.Between(gone, back)
	t.Logf("before  %s", before)
	t.Logf("gone    %s", down)
	t.Logf("back    %s", tally.Between(back, time.Now()))
	if before.Failed > 0 || down.Failed > 0 {
		t.Errorf("turns failed: before %v, while the source was gone %v", before.Errors, down.Errors)
	}
	// Every video was loaded before the outage, so every turn during it
	// has a copy: fresh (L1 or L2) or stale and flagged, never none.
	if down.Reasons[chat.ReasonStaleTranscript] == 0 {
		t.Errorf("no stale transcript was served while the source was gone: %s", down)
	}
	for r, n := range down.Reasons {
		if r != chat.ReasonStaleTranscript {
			t.Errorf("%d turns degraded with %s while the source was gone: every video had a cached copy", n, r)
		}
	}
	// Converges: every instance answers with a fresh transcript again.
	per, longest, ok := tally.Recovery(len(cl.Instances), back)
	if !ok {
		t.Fatalf("not every instance answered with a fresh transcript after the source came back: %v", per)
	}
	t.Logf("recovered: every instance answered in full %v after the source came back", longest.Round(time.Millisecond))
	// And stays converged: once a load has had time to run (RetrySourceAfter
	// and LoadTimeout, 1 s each), no turn gets a stale copy any more.
	if late := tally.Between(back.Add(3*time.Second), time.Now()); late.Degraded > 0 {
		t.Errorf("3 s after the source came back, turns still degrade: %s", late)
	}
}
