module.exports = {
  apps: [{
    name: 'graceful',
    script: 'app.js',
    instances: 2,
    exec_mode: 'cluster',
    wait_ready: true,
    listen_timeout: 10000,
    kill_timeout: 3000,
    shutdown_with_message: true,
  }],
};
