'use strict';
// Values serverless.yml derives from config/<stage>.yml that need arithmetic or repetition,
// which serverless variables cannot express.

// One EventBridge schedule per consumer: each tick starts drain.consumers drains (the
// consumer's reserved concurrency is that same number, so they never pile up).
module.exports.consumerEvents = async ({ resolveVariable }) => {
  const consumers = Number(await resolveVariable('self:custom.cfg.drain.consumers'));
  const rate = await resolveVariable('self:custom.cfg.drain.schedule');
  return Array.from({ length: consumers }, () => ({ schedule: { rate: [rate] } }));
};

// SQS wants seconds; config says days.
module.exports.dlqRetentionSeconds = async ({ resolveVariable }) =>
  Number(await resolveVariable('self:custom.cfg.queue.dlq_retention_days')) * 86400;
