module.exports = {
  apps: [
    { name: 'api', script: 'api/server.js', instances: 2, exec_mode: 'cluster' },
    { name: 'worker', script: 'worker/main.py', interpreter: 'python3' },
    { name: 'scheduler', script: './scripts/scheduler.sh' },
  ],
};
