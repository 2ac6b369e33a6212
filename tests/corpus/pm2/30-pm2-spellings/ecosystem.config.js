module.exports = {
  apps: [{
    name: 'spelled',
    exec: 'server.js',
    exec_mode: 'fork_mode',
    exec_interpreter: 'node',
    autorestart: false,
    stop_exit_codes: [0],
    max_restarts: 5,
    vizion: false,
    source_map_support: true,
    treekill: true,
    kill_retry_time: 100,
  }, {
    name: 'clustered',
    script: 'server.js',
    exec_mode: 'cluster_mode',
    instances: '2',
  }],
};
