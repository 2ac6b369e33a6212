module.exports = {
  apps: [{
    name: 'ports',
    namespace: 'web',
    script: 'server.js',
    instances: 2,
    exec_mode: 'fork',
    pid_file: './pids/ports.pid',
    instance_var: 'INSTANCE_ID',
    increment_var: 'PORT',
    env: { PORT: 3000 },
  }],
};
