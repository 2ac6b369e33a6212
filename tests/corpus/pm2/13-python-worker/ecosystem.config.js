module.exports = {
  apps: [{
    name: 'celery-like',
    script: 'worker.py',
    interpreter: 'python3',
    instances: 2,
    autorestart: true,
    env: { PYTHONPATH: '.' },
  }],
};
