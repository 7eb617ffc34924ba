// Continual updates from a stream of feedback (test-then-train): each event is first scored by the
// current model from the user's history (rank of the true item among all items), then learned from
// in a micro-batch: forward, backward, LibTorch Adam for the transformer and the fused row-wise Adam
// for the touched item rows. With a student, it takes a distillation step from the updated teacher on
// the same batch, and every stream.publish_every events (or seconds) it is exported to a versioned
// TorchScript file with a manifest (engine/export/publisher.h) that servers follow. New users and items get fresh slots and rows; malformed events go to a
// dead-letter file; checkpoints hold the model, both optimizers, the histories, the id maps and the
// source position, so a resumed run continues at exactly the next event.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/config/config.h"
#include "engine/data/readers.h"
#include "engine/eval/metrics.h"
#include "engine/stream/sources.h"
#include "engine/stream/stream_settings.h"  // check_stream_settings, update_dropout

namespace freshrec {

struct StreamRun {
  std::string teacher;      // checkpoint to start from (ignored when resuming)
  std::string resume;       // a stream checkpoint (stream.pt) to continue from
  bool learn = true;        // false: the frozen baseline, scored but never updated
  std::string output_dir;   // stream.pt, metrics.jsonl, dead_letters.jsonl
  std::string label = "continual";
  std::string student;      // optional student checkpoint, distilled online from the teacher (ignored when resuming)
  std::string publish_dir;  // where models are published (stream.publish_*); "" for output_dir/published
};

// Where a run's wall time went, by the host's clock (on a GPU the device runs behind the host, so its
// time shows up where the host waits for it: the readout). Not kept across a resume.
struct StreamProfile {
  double source = 0;    // everything outside micro-batches: reading and parsing records, ids, histories
  double batching = 0;  // a micro-batch's inputs and targets (and, with a bounded store, excluded items) built
                        // by the host and sent to the device
  double excluded = 0;  // each event's earlier items gathered on the device (SeenItems), with its host side
  double ranking = 0;   // the ranking: its own forwards (teacher and student), or the teacher's scores of
                        // the step's forward
  double forward = 0;   // the teacher's training forward and loss
  double update = 0;    // the teacher's backward, guard, clipping and optimizers
  double student = 0;   // the student's step: the teacher's forward for it, its forward (which ranks it
                        // too when the step's forward serves the ranking) and update
  double readout = 0;   // ranks, losses and flags taken in: metrics, windows, latencies (on a GPU, the wait
                        // for the device's work of the micro-batch before)
  double saving = 0;    // checkpoints and publications
  // The model's share: what the PyTorch reference's test-then-train step also does.
  double model_step() const { return ranking + forward + update + student; }
  // The host's own share, which grows with the batch, not with the histories' length (on a GPU the
  // readout includes waiting for the device).
  double host() const { return source + batching + readout; }
};

struct StreamSummary {
  uint64_t events = 0;          // records consumed, malformed included
  uint64_t scored = 0;          // events ranked before learning from them
  uint64_t cold_items = 0;      // scored events whose item the model had never seen (counted as misses)
  uint64_t new_users = 0, new_items = 0;
  uint64_t dead_letters = 0;
  uint64_t batches = 0, skipped_batches = 0;  // skipped: non-finite or exploding loss
  uint64_t replayed = 0;        // past examples trained on again (stream.replay_share)
  RankingMetrics overall{{10}};
  RankingMetrics student_overall{{10}};  // the student's prequential metrics (with a student)
  uint64_t publications = 0;
  // From an event's arrival to the end of publishing the first model that learned from it.
  double publish_delay_p50_ms = 0, publish_delay_p99_ms = 0;
  // From an event's arrival to the end of the model step that learned from it (scored, if frozen).
  double latency_p50_ms = 0, latency_p99_ms = 0;
  double seconds = 0;
  StreamProfile profile;
  std::string checkpoint;
};

// Runs the stream until the source ends. `warm_history` (events before the stream, in time order)
// fills the history store on a fresh start; on resume the store comes from the checkpoint.
StreamSummary run_stream(const Config& config, EventSource& source, const std::vector<RawEvent>& warm_history,
                         const StreamRun& run);

}  // namespace freshrec
