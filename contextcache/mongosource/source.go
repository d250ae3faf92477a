// Package mongosource is a [contextcache.Source] that reads transcripts
// from a MongoDB collection with the official driver
// (go.mongodb.org/mongo-driver/v2). It is a package of its own so that a
// program using contextcache with another Source, or not at all, does not
// link the driver.
//
//	client, err := mongo.Connect(mongosource.ClientOptions(uri))
//	...
//	src, err := mongosource.New(client.Database("lms").Collection("transcripts"), mongosource.Config{})
//	...
//	cache, err := contextcache.New(src, contextcache.Config{Redis: rdb})
//
// Errors follow the library's conventions: New returns a
// *chatscale.ConfigError (errors.Is(err, chatscale.ErrInvalidConfig)) for a
// nil collection or an impossible Config; Load returns a
// *chatscale.InputError (errors.Is(err, chatscale.ErrInvalidInput)) for IDs
// that cannot name a transcript, without querying, and an error wrapping
// contextcache.ErrNotFound when no document matches.
package mongosource

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"go.mongodb.org/mongo-driver/v2/bson"
	"go.mongodb.org/mongo-driver/v2/mongo"
	"go.mongodb.org/mongo-driver/v2/mongo/options"

	"github.com/chatscale/chatscale"
	"github.com/chatscale/chatscale/contextcache"
	"github.com/chatscale/chatscale/contextcache/internal/ids"
)

// pkg is the Package of this package's *chatscale.ConfigError and
// *chatscale.InputError values.
const pkg = "mongosource"

// CourseIDKind says how course IDs are stored in MongoDB.
type CourseIDKind uint8

// The kinds of course ID a Source can query.
const (
	// CourseIDObjectID stores course IDs as ObjectIDs; callers pass their
	// 24-digit hex form. It is the default.
	CourseIDObjectID CourseIDKind = iota
	// CourseIDString stores course IDs as strings, passed through as is.
	CourseIDString
)

// Config tunes a Source. Field names may use dots to reach into embedded
// documents. The zero value reads the default field names below. New works
// on a copy.
type Config struct {
	// CourseIDField holds the course ID. Default: "courseId".
	CourseIDField string
	// CourseID says how course IDs are stored. Default: CourseIDObjectID.
	CourseID CourseIDKind
	// VideoURLField holds the video URL. Default: "videoUrl".
	VideoURLField string
	// TextField holds the full transcript, a string. Default: "transcript".
	// When a document has no such field, Text joins the segments' texts.
	TextField string
	// SegmentsField holds the timed segments: an array of documents with
	// numeric start and end offsets and a string text. Default: "segments".
	SegmentsField string
	// TitleField holds the video title. Default: "title".
	TitleField string
	// UpdatedAtField holds the time of the last change, a BSON date.
	// Default: "updatedAt".
	UpdatedAtField string
	// SegmentStartField, SegmentEndField and SegmentTextField name the
	// fields of a segment. Defaults: "start", "end", "text".
	SegmentStartField, SegmentEndField, SegmentTextField string
	// SegmentUnit is the unit of the segments' numeric offsets.
	// Default: time.Second (zero). Negative is an error.
	SegmentUnit time.Duration
	// Timeout bounds one query, on top of the caller's context.
	// Default: DefaultTimeout, 5 s (zero). Negative means no bound besides
	// the context.
	Timeout time.Duration
}

// DefaultTimeout is the default of Config.Timeout.
const DefaultTimeout = 5 * time.Second

// Source loads transcripts from a MongoDB collection with one FindOne per
// call, projected to the fields it reads. It is a contextcache.Source and
// is safe for concurrent use.
type Source struct {
	coll       *mongo.Collection
	cfg        Config
	projection bson.D
}

var _ contextcache.Source = (*Source)(nil)

// New returns a Source reading coll. It does no I/O and does not take
// ownership of coll's client; callers disconnect it. It returns a
// *chatscale.ConfigError for a nil coll (Field "coll") or an impossible
// Config value (Field "Config.SegmentUnit", "Config.CourseID").
func New(coll *mongo.Collection, cfg Config) (*Source, error) {
	if coll == nil {
		return nil, &chatscale.ConfigError{Package: pkg, Field: "coll", Reason: "nil"}
	}
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	def(&cfg.CourseIDField, "courseId")
	def(&cfg.VideoURLField, "videoUrl")
	def(&cfg.TextField, "transcript")
	def(&cfg.SegmentsField, "segments")
	def(&cfg.TitleField, "title")
	def(&cfg.UpdatedAtField, "updatedAt")
	def(&cfg.SegmentStartField, "start")
	def(&cfg.SegmentEndField, "end")
	def(&cfg.SegmentTextField, "text")
	if cfg.SegmentUnit == 0 {
		cfg.SegmentUnit = time.Second
	}
	if cfg.Timeout == 0 {
		cfg.Timeout = DefaultTimeout
	}
	if cfg.SegmentUnit < 0 {
		return nil, &chatscale.ConfigError{Package: pkg, Field: "Config.SegmentUnit", Reason: "negative"}
	}
	if cfg.CourseID > CourseIDString {
		return nil, &chatscale.ConfigError{Package: pkg, Field: "Config.CourseID",
			Reason: fmt.Sprintf("unknown CourseIDKind %d", cfg.CourseID)}
	}
	s := &Source{coll: coll, cfg: cfg}
	s.projection = bson.D{{Key: "_id", Value: 0}}
	for _, f := range []string{cfg.TitleField, cfg.TextField, cfg.SegmentsField, cfg.UpdatedAtField} {
		s.projection = append(s.projection, bson.E{Key: f, Value: 1})
	}
	return s, nil
}

// Load returns the transcript of videoURL in courseID. It returns a
// *chatscale.InputError, without querying, when an ID cannot name a
// transcript (empty, longer than contextcache.MaxKeyLen, not UTF-8, with a
// control character) or when courseID is not an ObjectID's hex form and
// CourseIDObjectID is configured (Field "CourseID"); an error wrapping
// contextcache.ErrNotFound when no document matches; and the driver's
// error, wrapped, when the query fails.
func (s *Source) Load(ctx context.Context, courseID, videoURL string) (contextcache.Document, error) {
	if err := ids.Check(pkg, courseID, videoURL); err != nil {
		return contextcache.Document{}, err
	}
	var course any = courseID
	if s.cfg.CourseID == CourseIDObjectID {
		oid, err := bson.ObjectIDFromHex(courseID)
		if err != nil {
			return contextcache.Document{}, &chatscale.InputError{Package: pkg, Field: "CourseID", Reason: "not an ObjectID in hex"}
		}
		course = oid
	}
	if s.cfg.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.cfg.Timeout)
		defer cancel()
	}
	filter := bson.D{{Key: s.cfg.CourseIDField, Value: course}, {Key: s.cfg.VideoURLField, Value: videoURL}}
	raw, err := s.coll.FindOne(ctx, filter, options.FindOne().SetProjection(s.projection)).Raw()
	if errors.Is(err, mongo.ErrNoDocuments) {
		return contextcache.Document{}, fmt.Errorf("mongosource: course %q video %q: %w", courseID, videoURL, contextcache.ErrNotFound)
	}
	if err != nil {
		return contextcache.Document{}, fmt.Errorf("mongosource: find: %w", err)
	}
	d, err := s.decode(raw)
	if err != nil {
		return contextcache.Document{}, fmt.Errorf("mongosource: document for course %q video %q: %w", courseID, videoURL, err)
	}
	d.CourseID, d.VideoURL = courseID, videoURL
	return d, nil
}

func (s *Source) decode(raw bson.Raw) (contextcache.Document, error) {
	var d contextcache.Document
	if v, err := raw.LookupErr(strings.Split(s.cfg.TitleField, ".")...); err == nil {
		t, ok := v.StringValueOK()
		if !ok && v.Type != bson.TypeNull {
			return d, fmt.Errorf("field %s is %s, not a string", s.cfg.TitleField, v.Type)
		}
		d.Title = t
	}
	if v, err := raw.LookupErr(strings.Split(s.cfg.UpdatedAtField, ".")...); err == nil {
		if dt, ok := v.DateTimeOK(); ok {
			d.UpdatedAt = time.UnixMilli(dt)
		} else if v.Type != bson.TypeNull {
			return d, fmt.Errorf("field %s is %s, not a date", s.cfg.UpdatedAtField, v.Type)
		}
	}
	if v, err := raw.LookupErr(strings.Split(s.cfg.SegmentsField, ".")...); err == nil && v.Type != bson.TypeNull {
		arr, ok := v.ArrayOK()
		if !ok {
			return d, fmt.Errorf("field %s is %s, not an array", s.cfg.SegmentsField, v.Type)
		}
		vals, err := arr.Values()
		if err != nil {
			return d, err
		}
		d.Segments = make([]contextcache.Segment, 0, len(vals))
		for i, sv := range vals {
			sd, ok := sv.DocumentOK()
			if !ok {
				return d, fmt.Errorf("segment %d is %s, not a document", i, sv.Type)
			}
			var seg contextcache.Segment
			if seg.Start, err = s.offset(sd, s.cfg.SegmentStartField); err != nil {
				return d, fmt.Errorf("segment %d: %w", i, err)
			}
			if seg.End, err = s.offset(sd, s.cfg.SegmentEndField); err != nil {
				return d, fmt.Errorf("segment %d: %w", i, err)
			}
			if tv, err := sd.LookupErr(s.cfg.SegmentTextField); err == nil {
				if seg.Text, ok = tv.StringValueOK(); !ok {
					return d, fmt.Errorf("segment %d: %s is %s, not a string", i, s.cfg.SegmentTextField, tv.Type)
				}
			}
			d.Segments = append(d.Segments, seg)
		}
	}
	v, err := raw.LookupErr(strings.Split(s.cfg.TextField, ".")...)
	switch {
	case err == nil && v.Type != bson.TypeNull:
		t, ok := v.StringValueOK()
		if !ok {
			return d, fmt.Errorf("field %s is %s, not a string", s.cfg.TextField, v.Type)
		}
		d.Text = t
	case len(d.Segments) > 0:
		var b strings.Builder
		for i, seg := range d.Segments {
			if i > 0 {
				b.WriteByte(' ')
			}
			b.WriteString(seg.Text)
		}
		d.Text = b.String()
	}
	return d, nil
}

func (s *Source) offset(seg bson.Raw, field string) (time.Duration, error) {
	v, err := seg.LookupErr(field)
	if err != nil {
		return 0, nil
	}
	var f float64
	switch v.Type {
	case bson.TypeDouble:
		f = v.Double()
	case bson.TypeInt32:
		f = float64(v.Int32())
	case bson.TypeInt64:
		f = float64(v.Int64())
	case bson.TypeNull:
		return 0, nil
	default:
		return 0, fmt.Errorf("%s is %s, not a number", field, v.Type)
	}
	return time.Duration(f * float64(s.cfg.SegmentUnit)), nil
}

// EnsureIndexes creates the indexes Load relies on, {courseId: 1,
// videoUrl: 1} and {courseId: 1} (with the configured field names). It is
// idempotent. It sends one createIndexes command per index: FerretDB 1.x
// drops the connection on a batch that repeats existing indexes.
func (s *Source) EnsureIndexes(ctx context.Context) error {
	for _, keys := range []bson.D{
		{{Key: s.cfg.CourseIDField, Value: 1}, {Key: s.cfg.VideoURLField, Value: 1}},
		{{Key: s.cfg.CourseIDField, Value: 1}},
	} {
		if _, err := s.coll.Indexes().CreateOne(ctx, mongo.IndexModel{Keys: keys}); err != nil {
			return fmt.Errorf("mongosource: creating index %v: %w", keys, err)
		}
	}
	return nil
}

// Client option defaults of ClientOptions.
const (
	DefaultMaxPoolSize            = 50
	DefaultServerSelectionTimeout = 5 * time.Second
	DefaultClientTimeout          = 10 * time.Second
)

// ClientOptions returns driver options for uri with chatscale's pool
// defaults: at most DefaultMaxPoolSize (50) connections,
// DefaultServerSelectionTimeout (5 s) to select a server and
// DefaultClientTimeout (10 s) per operation. Options given in uri win over
// these defaults. Pass the result to mongo.Connect.
func ClientOptions(uri string) *options.ClientOptions {
	return options.Client().
		SetMaxPoolSize(DefaultMaxPoolSize).
		SetServerSelectionTimeout(DefaultServerSelectionTimeout).
		SetTimeout(DefaultClientTimeout).
		ApplyURI(uri)
}
