// The stream's settings; see stream_settings.h.
#include "engine/stream/stream_settings.h"

#include <string>

namespace freshrec {

StreamSettings::StreamSettings(const Config& c)
    : batch_size(c.get_int("stream.batch_size")),
      window(c.get_int("stream.window")),
      history_keep(c.get_int("stream.history_keep")),
      checkpoint_every(c.get_int("stream.checkpoint_every")),
      negatives(c.get_int("train.negatives")),
      grow_chunk(c.get_int("stream.grow_chunk")),
      max_wait_ms(c.get_int("stream.max_wait_ms")),
      replay_capacity(c.get_int("stream.replay_capacity")),
      ce_chunk(c.get_int("train.ce_chunk")),
      publish_every(c.get_int("stream.publish_every")),
      publish_keep(c.get_int("stream.publish_keep")),
      full_softmax(c.get_string("stream.loss") == "full"),
      all_positions(c.get_string("stream.train_positions") == "all"),
      exclude_seen(c.get_bool("train.exclude_seen")),
      adapters_only(c.get_string("stream.update") == "adapters"),
      replay_share(c.get_float("stream.replay_share")),
      checkpoint_seconds(c.get_float("stream.checkpoint_seconds")),
      publish_seconds(c.get_float("stream.publish_seconds")),
      seed(static_cast<uint64_t>(c.get_int("train.seed"))),
      learning(LearnerSettings::streaming(c)) {
  if (batch_size <= 0 || window <= 0 || grow_chunk <= 0 || negatives <= 0 || replay_capacity <= 0)
    throw ConfigError(
        "stream.batch_size, stream.window, stream.grow_chunk, stream.replay_capacity and train.negatives must be "
        "positive");
  if (exclude_seen && !full_softmax)
    throw ConfigError(c.origin("train.exclude_seen") +
                      ": train.exclude_seen needs stream.loss=full in the stream (it shapes the full-softmax loss)");
  if (history_keep < 0) throw ConfigError("stream.history_keep must be >= 0, got " + std::to_string(history_keep));
  if (replay_share < 0) throw ConfigError("stream.replay_share must be >= 0, got " + std::to_string(replay_share));
  if (publish_every < 0 || publish_seconds < 0 || publish_keep < 1)
    throw ConfigError("stream.publish_every and stream.publish_seconds must be >= 0, stream.publish_keep >= 1");
}

void check_stream_settings(const Config& config) {
  StreamSettings{config};
  update_dropout(config, 0.0);
}

double update_dropout(const Config& config, double model_dropout) {
  const double dropout = config.get_float("stream.dropout");
  if (dropout == -1) return model_dropout;
  if (dropout < 0 || dropout >= 1)
    throw ConfigError(config.origin("stream.dropout") +
                      ": stream.dropout must be in [0, 1), or -1 for the model's own, got " + std::to_string(dropout));
  return dropout;
}

}  // namespace freshrec
