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

// The task modules, their migration folders and their settings, as sluice.settings'
// Settings.task_env writes them for the local stack (tests/infra proves the two agree).
const taskEntries = async (resolveVariable) => {
  const tasks = await resolveVariable('self:custom.cfg.tasks, null');
  return Array.isArray(tasks) ? tasks : [];
};
module.exports.taskModules = async ({ resolveVariable }) =>
  (await taskEntries(resolveVariable)).map((t) => t.module).join(',');
module.exports.taskMigrations = async ({ resolveVariable }) =>
  (await taskEntries(resolveVariable)).filter((t) => t.migrations).map((t) => `${t.module}=${t.migrations}`).join(',');
const sortedJson = (value) => {
  if (Array.isArray(value)) return `[${value.map(sortedJson).join(',')}]`;
  if (value && typeof value === 'object') {
    return `{${Object.keys(value).sort().map((k) => `${JSON.stringify(k)}:${sortedJson(value[k])}`).join(',')}}`;
  }
  return JSON.stringify(value);
};
module.exports.taskSettings = async ({ resolveVariable }) => {
  const withSettings = (await taskEntries(resolveVariable)).filter((t) => t.settings && Object.keys(t.settings).length);
  return sortedJson(Object.fromEntries(withSettings.map((t) => [t.module, t.settings])));
};
