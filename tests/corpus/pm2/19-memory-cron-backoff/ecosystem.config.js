module.exports = {
  apps: [{
    name: 'reports',
    script: 'reports.js',
    max_memory_restart: '300M',
    cron_restart: '0 3 * * *',
    restart_delay: 4000,
    exp_backoff_restart_delay: 100,
    max_restarts: 10,
    min_uptime: '10s',
  }],
};
